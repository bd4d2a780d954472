//! The DIRAC Configuration Server as a source
//! (docs/DIRAC.md#where-diracs-configuration-comes-from): when the local files name servers in
//! `/DIRAC/Configuration/Servers`, the CS is fetched with `getCompressedDataIfNewer` over DISET
//! (host certificate, `extraCredentials = "hosts"`) and merged *under* the local files, which win;
//! it is polled every `/DIRAC/Configuration/RefreshTime` seconds (DIRAC's default 300).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dirac_wire::Value;
use dirac_wire::client::{ClientError, DisetClient, ServiceUrl};

use crate::config::cfg::split_list;
use crate::config::{Section, resolve_security};

/// DIRAC's default `RefreshTime`.
const DEFAULT_REFRESH_SECONDS: u64 = 300;
/// One call to one server; the next server is tried after it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A decompressed CS larger than this is refused (a zlib bomb must not exhaust memory).
const MAX_CFG_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("/DIRAC/Configuration/Servers: {0}")]
    Servers(String),
    #[error("the Configuration Server needs /DIRAC/Security/{0} in the local files")]
    Security(&'static str),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no Configuration Server answered: {0}")]
    NoServer(String),
    #[error("{server} sent an unusable configuration: {reason}")]
    BadData { server: String, reason: String },
}

/// A configuration fetched from a Configuration Server.
#[derive(Clone, Debug)]
pub struct RemoteCfg {
    pub version: String,
    pub server: String,
    pub section: Section,
}

/// Where and how often to fetch.
pub struct RemoteSource {
    servers: Vec<ServiceUrl>,
    refresh: Duration,
    client: DisetClient,
}

impl RemoteSource {
    /// From the local files: `None` unless `/DIRAC/Configuration/Servers` names servers.
    pub fn from_local(local: &Section) -> Result<Option<Self>, RemoteError> {
        let servers = local
            .get("/DIRAC/Configuration/Servers")
            .map(split_list)
            .unwrap_or_default();
        if servers.is_empty() {
            return Ok(None);
        }
        let servers = servers
            .iter()
            .map(|url| ServiceUrl::parse(url).map_err(|e| RemoteError::Servers(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let refresh = local
            .get("/DIRAC/Configuration/RefreshTime")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_REFRESH_SECONDS);
        let security = resolve_security(local);
        let client = DisetClient::new(
            &security
                .cert_file
                .ok_or(RemoteError::Security("CertFile"))?,
            &security.key_file.ok_or(RemoteError::Security("KeyFile"))?,
            &security
                .ca_location
                .ok_or(RemoteError::Security("CALocation"))?,
            CALL_TIMEOUT,
        )?;
        Ok(Some(Self {
            servers,
            refresh: Duration::from_secs(refresh),
            client,
        }))
    }

    pub fn refresh_time(&self) -> Duration {
        self.refresh
    }

    /// The CS if its version is newer than `known` (None: we have nothing yet). Servers are
    /// tried in order, `master` first when given (DIRAC's `refreshConfiguration(fromMaster)`).
    pub async fn fetch_if_newer(
        &self,
        known: Option<&str>,
        master: Option<&str>,
    ) -> Result<Option<RemoteCfg>, RemoteError> {
        let master = master.and_then(|url| ServiceUrl::parse(url).ok());
        let mut failures = Vec::new();
        for server in master.iter().chain(&self.servers) {
            let args = vec![Value::Str(known.unwrap_or("0").to_owned())];
            match self
                .client
                .call(server, "getCompressedDataIfNewer", args)
                .await
            {
                Ok(reply) => return decode_reply(&reply, known, &server.to_string()),
                Err(error) => {
                    tracing::warn!(%error, "Configuration Server did not answer");
                    failures.push(error.to_string());
                }
            }
        }
        Err(RemoteError::NoServer(failures.join("; ")))
    }
}

/// `{"newestVersion": v, "data": base64(zlib(CFG text))}`; no `data` when we are up to date.
fn decode_reply(
    reply: &Value,
    known: Option<&str>,
    server: &str,
) -> Result<Option<RemoteCfg>, RemoteError> {
    let bad = |reason: &str| RemoteError::BadData {
        server: server.to_owned(),
        reason: reason.to_owned(),
    };
    let version = reply
        .get("newestVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no newestVersion"))?;
    let data = match reply.get("data") {
        None | Some(Value::None) => return Ok(None),
        Some(Value::Str(text)) => STANDARD
            .decode(text.trim())
            .map_err(|e| bad(&format!("data is not base64: {e}")))?,
        Some(Value::Bytes(bytes)) => bytes.clone(),
        Some(_) => return Err(bad("data is neither text nor bytes")),
    };
    if known.is_some_and(|known| known >= version) {
        return Ok(None);
    }
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(data.as_slice())
        .take(MAX_CFG_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| bad(&format!("data does not inflate to text: {e}")))?;
    let label = format!("{server} (version {version})");
    let section =
        Section::parse(&text, Path::new(&label)).map_err(|e| bad(&format!("CFG: {e}")))?;
    Ok(Some(RemoteCfg {
        version: version.to_owned(),
        server: server.to_owned(),
        section,
    }))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn reply(version: &str, cfg: Option<&str>) -> Value {
        let mut entries = vec![(
            Value::Str("newestVersion".into()),
            Value::Str(version.into()),
        )];
        if let Some(cfg) = cfg {
            let mut zlib =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            zlib.write_all(cfg.as_bytes()).unwrap();
            let data = STANDARD.encode(zlib.finish().unwrap());
            entries.push((Value::Str("data".into()), Value::Str(data)));
        }
        Value::Dict(entries)
    }

    #[test]
    fn a_newer_cs_is_inflated_and_parsed() {
        let cfg = "Registry\n{\n  DefaultGroup = g\n}\n";
        let got = decode_reply(
            &reply("2026-11-28 17:00:00.1", Some(cfg)),
            None,
            "dips://cs",
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.version, "2026-11-28 17:00:00.1");
        assert_eq!(got.section.get("/Registry/DefaultGroup"), Some("g"));
    }

    #[test]
    fn an_up_to_date_cs_sends_no_data_and_changes_nothing() {
        assert!(
            decode_reply(&reply("v1", None), Some("v1"), "dips://cs")
                .unwrap()
                .is_none()
        );
        // Data for a version we already hold is ignored too.
        assert!(
            decode_reply(&reply("v1", Some("A = 1\n")), Some("v1"), "dips://cs")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unusable_replies_are_errors() {
        let no_version = Value::Dict(vec![]);
        assert!(decode_reply(&no_version, None, "dips://cs").is_err());
        let mut not_base64 = reply("v2", None);
        if let Value::Dict(entries) = &mut not_base64 {
            entries.push((Value::Str("data".into()), Value::Str("%%%".into())));
        }
        assert!(decode_reply(&not_base64, None, "dips://cs").is_err());
    }

    #[test]
    fn servers_come_from_the_local_files() {
        let local = Section::parse("DIRAC\n{\n}\n", Path::new("t")).unwrap();
        assert!(RemoteSource::from_local(&local).unwrap().is_none());
        let bad = Section::parse(
            "DIRAC\n{\n  Configuration\n  {\n    Servers = https://cs:1/Configuration/Server\n  }\n}\n",
            Path::new("t"),
        )
        .unwrap();
        assert!(matches!(
            RemoteSource::from_local(&bad),
            Err(RemoteError::Servers(_))
        ));
        let no_cert = Section::parse(
            "DIRAC\n{\n  Configuration\n  {\n    Servers = dips://cs:9135/Configuration/Server\n  }\n}\n",
            Path::new("t"),
        )
        .unwrap();
        assert!(matches!(
            RemoteSource::from_local(&no_cert),
            Err(RemoteError::Security("CertFile"))
        ));
    }
}
