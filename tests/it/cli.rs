//! The binary as an operator uses it: configuration errors, `serve`'s ports, locks and
//! open-file limit, `migrate` with secrets from the environment, `rotate-key` against a running
//! server.

use std::net::TcpStream;

use tokenmanager::config::Backend;
use tokenmanager::crypto::KeyringFile;

use crate::client::http_get;
use crate::process::{ServeProcess, run, stderr};
use crate::support::{TestDb, TestStore, get_credential, new_token, store_token};
use crate::test_config::TestConfig;

fn keyring_for(db: &TestDb) -> KeyringFile {
    let file = KeyringFile::new(db.dir.path().join("keyring"));
    file.create().unwrap();
    file
}

#[test]
fn serve_binds_free_ports_and_answers_health_checks() {
    let db = TestDb::new(Backend::Sqlite);
    keyring_for(&db);
    let config = TestConfig::on(&db).write("tm.cfg");
    let server = ServeProcess::spawn(&config);
    let ports = [server.https, server.dips, server.metrics];
    assert!(ports.iter().all(|&p| p != 0), "{ports:?}");
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    assert_eq!(http_get(server.metrics, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(server.metrics, "/readyz"), (200, "ready\n".into()));
    assert_eq!(http_get(server.metrics, "/nothing").0, 404);
    for port in [server.https, server.dips] {
        TcpStream::connect(("127.0.0.1", port)).expect("the protocol ports are bound");
    }
}

/// The soft and hard limits of the "Max open files" row of /proc/<pid>/limits (`u64::MAX`:
/// unlimited).
fn max_open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files in {limits}"));
    let mut values = row.split_whitespace().map(|v| match v {
        "unlimited" => u64::MAX,
        v => v.parse().unwrap(),
    });
    (values.next().unwrap(), values.next().unwrap())
}

#[test]
fn serve_raises_a_lowered_open_file_limit_to_the_hard_one() {
    const LOWERED: u64 = 256;
    let (_, hard) = max_open_files(std::process::id());
    assert!(
        hard > LOWERED,
        "the hard limit ({hard}) leaves nothing to raise"
    );
    // The kernel refuses an unlimited soft limit for descriptors: serve stops at fs.nr_open.
    let expected = if hard == u64::MAX {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    } else {
        hard
    };
    let db = TestDb::new(Backend::Sqlite);
    keyring_for(&db);
    let config = TestConfig::on(&db).write("tm.cfg");
    let mut server = ServeProcess::spawn_with(&config, |command| {
        crate::process::with_open_file_limit(command, LOWERED, hard)
    });

    let raised = server.wait_for_log("open file limit raised");
    assert!(
        raised.contains(&format!("before={LOWERED} soft={expected}")),
        "{raised}"
    );
    assert_eq!(max_open_files(server.pid()), (expected, hard));
    let (status, metrics) = http_get(server.metrics, "/metrics");
    assert_eq!(status, 200);
    let max_fds = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_max_fds "))
        .unwrap_or_else(|| panic!("no process_max_fds in\n{metrics}"));
    assert_eq!(max_fds.parse::<f64>().unwrap(), expected as f64);
}

/// src/main.rs's `malloc_conf` is in force: jemalloc purges on a thread of its own, so an
/// idle process gives a burst's memory back.
#[test]
fn serve_runs_a_jemalloc_background_thread() {
    let db = TestDb::new(Backend::Sqlite);
    keyring_for(&db);
    let config = TestConfig::on(&db).write("tm.cfg");
    let server = ServeProcess::spawn(&config);
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .collect();
    assert!(
        threads.iter().any(|comm| comm == "jemalloc_bg_thd"),
        "{threads:?}"
    );
}

#[test]
fn a_second_serve_on_the_same_sqlite_file_is_refused() {
    let db = TestDb::new(Backend::Sqlite);
    keyring_for(&db);
    let config = TestConfig::on(&db).write("tm.cfg");
    let first = ServeProcess::spawn(&config);
    let second = run(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(!second.status.success());
    let message = stderr(&second);
    assert!(
        message.contains("is already served by another tokenmanager process"),
        "{message}"
    );
    assert!(
        message.contains("use PostgreSQL or MariaDB for replicas"),
        "{message}"
    );
    assert_eq!(
        http_get(first.metrics, "/healthz").0,
        200,
        "the first one keeps serving"
    );
}

#[test]
fn configuration_errors_name_the_file_the_line_and_the_option() {
    let db = TestDb::new(Backend::Sqlite);
    keyring_for(&db);
    let config = {
        let mut c = TestConfig::on(&db);
        c.service().set("MetricsPort", 99999);
        c.write("bad.cfg")
    };
    let output = run(&["migrate", "--config", config.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    let message = stderr(&output);
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.contains("99999"))
        .unwrap()
        + 1;
    assert!(
        message.contains(&format!("{}:{line}:", config.display())),
        "{message}"
    );
    assert!(
        message.contains("/Systems/Framework/Production/Services/TokenManager/MetricsPort"),
        "{message}"
    );

    let unbalanced = db.dir.path().join("unbalanced.cfg");
    std::fs::write(&unbalanced, "DIRAC\n{\n  Setup = Test\n").unwrap();
    let output = run(&["serve", "--config", unbalanced.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&unbalanced.display().to_string()),
        "{}",
        stderr(&output)
    );

    let output = run(&["migrate"], &[]);
    assert!(
        stderr(&output).contains("no configuration file given"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unknown_option_in_our_section_is_a_warning() {
    let db = TestDb::new(Backend::Sqlite);
    keyring_for(&db);
    let config = {
        let mut c = TestConfig::on(&db);
        c.service().set("Colour", "blue");
        c.write("tm.cfg")
    };
    let output = run(&["migrate", "--config", config.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("WARN"), "{message}");
    assert!(
        message.contains("unknown option") && message.contains("TokenManager/Colour"),
        "{message}"
    );
}

#[test]
fn later_configuration_files_win() {
    let db = TestDb::new(Backend::Sqlite);
    keyring_for(&db);
    let broken = {
        let mut c = TestConfig::new(db.dir.path());
        c.database().set("URL", "oracle://nowhere/db");
        c.write("a.cfg")
    };
    let fixed = TestConfig::on(&db).write("b.cfg");
    let [a, b] = [broken.to_str().unwrap(), fixed.to_str().unwrap()];
    let output = run(&["migrate", "--config", a, "--config", b], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run(&["migrate", "--config", b, "--config", a], &[]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("a.cfg"), "{}", stderr(&output));
}

#[test]
fn a_missing_keyring_stops_start_up() {
    let db = TestDb::new(Backend::Sqlite);
    let config = TestConfig::on(&db).write("tm.cfg");
    let output = run(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("cannot read the encryption keyring"),
        "{message}"
    );
    assert!(message.contains(&db.dir.path().join("keyring").display().to_string()));
    assert!(
        !db.dir.path().join("keyring").exists(),
        "nothing generated without the demo option"
    );
}

#[test]
fn migrate_takes_the_database_url_and_password_from_the_environment() {
    for backend in [Backend::Postgres, Backend::Mysql] {
        let db = TestDb::new(backend);
        keyring_for(&db);
        // No TokenDB section at all: the URL comes from TOKENMANAGER_DB_URL.
        let config = TestConfig::new(db.dir.path()).write("tm.cfg");
        let password_file = db.dir.path().join("db-password");
        std::fs::write(&password_file, "unused-by-trust-auth\n").unwrap();
        let env = [
            ("TOKENMANAGER_DB_URL", db.url.as_str()),
            (
                "TOKENMANAGER_DB_PASSWORD_FILE",
                password_file.to_str().unwrap(),
            ),
        ];
        let output = run(&["migrate", "--config", config.to_str().unwrap()], &env);
        let message = stderr(&output);
        if backend == Backend::Postgres {
            assert!(output.status.success(), "{message}");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(stdout.contains("applied 20261128000001"), "{stdout}");
            assert!(
                !stdout.contains("unused-by-trust-auth")
                    && !message.contains("unused-by-trust-auth")
            );
            assert!(stdout.contains(":***@"), "the password is masked: {stdout}");
        } else {
            // MariaDB's root has no password: a wrong one is refused, and the error says so
            // without showing it.
            assert!(!output.status.success());
            assert!(
                message.contains("Access denied for user 'root'"),
                "{message}"
            );
            assert!(message.contains("using password: YES"), "{message}");
            assert!(!message.contains("unused-by-trust-auth"), "{message}");
        }
    }
}

#[actix::test]
async fn rotate_key_reencrypts_every_row_while_serve_runs() {
    let store = TestStore::new(Backend::Sqlite).await;
    let config = TestConfig::on(&store.db).write("tm.cfg");
    let mut server = ServeProcess::spawn(&config);
    for user in ["u1", "u2", "u3"] {
        let token = new_token(user, "IAM", &format!("rt-{user}"), &format!("at-{user}"));
        store_token(&store.database, token).await;
    }

    let output = run(
        &[
            "rotate-key",
            "--config",
            config.to_str().unwrap(),
            "--batch",
            "2",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("added key k2"), "{stdout}");
    assert!(
        stdout.contains("re-encrypted 3 stored credentials under k2"),
        "{stdout}"
    );

    for user in ["u1", "u2", "u3"] {
        let stored = get_credential(&store.database, user, "IAM")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.key_id.as_str(), stored.refresh_token.expose()),
            ("k2", &*format!("rt-{user}"))
        );
    }
    let keyring = std::fs::read_to_string(store.keyring_file.path()).unwrap();
    assert!(!stdout.contains(keyring.lines().last().unwrap().split(' ').nth(1).unwrap()));

    server.signal("HUP");
    let reloaded = server.wait_for_log("configuration and keyring reloaded");
    assert!(reloaded.contains("k2"), "{reloaded}");
    assert_eq!(http_get(server.metrics, "/readyz").0, 200);
}

/// Replicas started together migrate a fresh database one at a time: every one succeeds.
fn replicas_starting_together_take_turns_migrating(backend: Backend) {
    let db = TestDb::new(backend);
    keyring_for(&db);
    let config = TestConfig::on(&db).write("tm.cfg");
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || run(&["migrate", "--config", config.to_str().unwrap()], &[]))
        })
        .collect();
    for output in runs.into_iter().map(|r| r.join().unwrap()) {
        assert!(output.status.success(), "{}", stderr(&output));
    }
}

#[test]
fn postgres_replicas_starting_together_take_turns_migrating() {
    replicas_starting_together_take_turns_migrating(Backend::Postgres);
}

#[test]
fn mariadb_replicas_starting_together_take_turns_migrating() {
    replicas_starting_together_take_turns_migrating(Backend::Mysql);
}
