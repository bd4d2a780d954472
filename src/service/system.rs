//! What `ping` reports about the process and the host (docs/DIRAC.md#ping-and-echo),
//! read from /proc.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::domain::utc_timestamp;

/// Linux's USER_HZ, the unit of the CPU times in /proc/self/stat.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

pub fn ping(started: SystemTime, service_name: &str) -> Value {
    let now = SystemTime::now();
    let mut dict = Map::new();
    dict.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    dict.insert("time".into(), json!(utc_timestamp(now)));
    let host_uptime = read_proc("/proc/uptime")
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok());
    if let Some(uptime) = host_uptime {
        dict.insert("host uptime".into(), json!(uptime as i64));
    }
    dict.insert("service start time".into(), json!(utc_timestamp(started)));
    let service_uptime = now
        .duration_since(started)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    dict.insert("service uptime".into(), json!(service_uptime));
    if let Some(load) = read_proc("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        dict.insert("load".into(), json!(load.join(" ")));
    }
    dict.insert("name".into(), json!(service_name));
    if let Some(times) = cpu_times(host_uptime.unwrap_or(0.0)) {
        dict.insert("cpu times".into(), times);
    }
    Value::Object(dict)
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Python's `os.times()` keys, as DIRAC's ping names them.
fn cpu_times(elapsed: f64) -> Option<Value> {
    let stat = read_proc("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let seconds = |index: usize| -> Option<f64> {
        Some(fields.get(index)?.parse::<f64>().ok()? / CLOCK_TICKS_PER_SECOND)
    };
    // utime, stime, cutime, cstime are fields 14-17 of stat(5); 11-14 once pid, comm are gone.
    Some(json!({
        "user time": seconds(11)?,
        "system time": seconds(12)?,
        "children user time": seconds(13)?,
        "children system time": seconds(14)?,
        "elapsed real time": elapsed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_reports_diracs_keys() {
        let value = ping(SystemTime::now(), "Framework/TokenManager");
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "version",
                "time",
                "host uptime",
                "service start time",
                "service uptime",
                "load",
                "name",
                "cpu times"
            ]
        );
        assert!(value["cpu times"]["user time"].as_f64().unwrap() >= 0.0);
    }
}
