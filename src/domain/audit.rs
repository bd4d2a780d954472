//! The audit trail's records (docs/OPERATIONS.md#the-audit-trail): who obtained a token for whom,
//! when, with which scopes and audience, where it came from and how the call ended; and every
//! change of a stored credential. A record names tokens by their key, never by value.

use std::fmt;
use std::net::IpAddr;

/// At most this many distinct client addresses are kept per aggregated record; more are noted
/// as `+` after them.
pub const MAX_CLIENT_ADDRESSES: usize = 8;

/// What a record is of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// getToken, whatever its outcome.
    #[default]
    Handout,
    /// updateToken stored a new login.
    Update,
    /// deleteToken removed a user's credentials.
    Delete,
    /// import-dirac-tokendb stored a credential read from DIRAC's TokenDB.
    Import,
    /// A refresh stored the refresh token the IdP rotated.
    Rotate,
    /// The IdP refused the stored refresh token, or its reply was lost: a new login is needed.
    NeedsRedelegation,
    /// rotate-key re-encrypted the stored tokens under a new key.
    KeyRotation,
    /// export-dirac-tokendb wrote a credential's refresh token, in clear text, into DIRAC's
    /// TokenDB.
    Export,
    /// An operator revoked a credential at the IdP and deleted it.
    Revoke,
}

impl AuditKind {
    pub const ALL: [Self; 9] = [
        Self::Handout,
        Self::Update,
        Self::Delete,
        Self::Import,
        Self::Rotate,
        Self::NeedsRedelegation,
        Self::KeyRotation,
        Self::Revoke,
        Self::Export,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handout => "handout",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Import => "import",
            Self::Rotate => "rotate",
            Self::NeedsRedelegation => "needs_redelegation",
            Self::KeyRotation => "key_rotation",
            Self::Revoke => "revoke",
            Self::Export => "export",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// Where a handed-out token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// This process's cache, with no database or IdP call (callers queued behind a refresh
    /// included: they are answered from its result).
    Cache,
    /// Obtained from the IdP by this process for this call.
    Minted,
    /// Obtained from the IdP by another replica, which stored it while this one waited.
    Replica,
    /// The access token stored with the credential (or the shared client-token row), minted
    /// earlier by this or another process.
    Stored,
}

impl Origin {
    pub const ALL: [Self; 4] = [Self::Cache, Self::Minted, Self::Replica, Self::Stored];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|origin| origin.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Minted => "minted",
            Self::Replica => "replica",
            Self::Stored => "stored",
        }
    }
}

/// How the record's call reached the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The JSON API.
    #[default]
    Json,
    /// DIRAC's HTTPS protocol.
    Https,
    /// DIRAC's DISET protocol (dips).
    Diset,
    /// A `tokenmanager` subcommand.
    Cli,
    /// The service's own work on behalf of a call (a refresh's rotation).
    Service,
}

impl Protocol {
    pub const ALL: [Self; 5] = [
        Self::Json,
        Self::Https,
        Self::Diset,
        Self::Cli,
        Self::Service,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|protocol| protocol.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Https => "https",
            Self::Diset => "diset",
            Self::Cli => "cli",
            Self::Service => "service",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the audit trail. Times are Unix seconds; a single event has `first_at == last_at`
/// and one occurrence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditRecord {
    pub first_at: i64,
    pub last_at: i64,
    pub occurrences: i64,
    pub kind: AuditKind,
    pub origin: Option<Origin>,
    /// `ok`, or the call's error code.
    pub outcome: String,
    /// The caller's DN (a bearer-token caller's `/O=DIRAC/CN=<sub>`); none for the service's
    /// own work.
    pub caller: Option<String>,
    pub caller_group: Option<String>,
    /// The DIRAC user the token is for; none for DIRAC's own (client) tokens.
    pub on_behalf_of: Option<String>,
    /// The IdP's user ID of the credential.
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Option<String>,
    pub audience: Option<String>,
    pub protocol: Protocol,
    /// Distinct client addresses, at most [`MAX_CLIENT_ADDRESSES`].
    pub client_addresses: Vec<IpAddr>,
    /// More distinct addresses were seen than are kept.
    pub more_addresses: bool,
    /// The process that recorded it (`host:pid:start`).
    pub replica: String,
    /// A short remark: a generation, a key id, a count; never a token.
    pub detail: Option<String>,
}

impl AuditRecord {
    /// The client addresses as stored: comma-separated, `+` after them when some were left out.
    pub fn addresses_text(&self) -> Option<String> {
        if self.client_addresses.is_empty() {
            return None;
        }
        let mut text = self
            .client_addresses
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if self.more_addresses {
            text.push_str(",+");
        }
        Some(text)
    }

    /// The record as `getTokenAudit` and `tokenmanager audit --json` show it, with its row id.
    pub fn to_json(&self, id: i64) -> serde_json::Value {
        let mut addresses: Vec<String> = self
            .client_addresses
            .iter()
            .map(IpAddr::to_string)
            .collect();
        if self.more_addresses {
            addresses.push("+".into());
        }
        serde_json::json!({
            "id": id,
            "kind": self.kind.as_str(),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "occurrences": self.occurrences,
            "origin": self.origin.map(Origin::as_str),
            "outcome": self.outcome,
            "caller": self.caller,
            "caller_group": self.caller_group,
            "on_behalf_of": self.on_behalf_of,
            "user_id": self.user_id,
            "provider": self.provider,
            "client_id": self.client_id,
            "scopes": self.scopes,
            "audience": self.audience,
            "protocol": self.protocol.as_str(),
            "client_addresses": addresses,
            "replica": self.replica,
            "detail": self.detail,
        })
    }

    /// Reads [`AuditRecord::addresses_text`] back; what does not parse is left out.
    pub fn set_addresses_text(&mut self, text: &str) {
        for part in text.split(',') {
            match part.parse() {
                Ok(address) => self.client_addresses.push(address),
                Err(_) => self.more_addresses |= part == "+",
            }
        }
    }
}

/// The distinct addresses of an aggregated record, bounded.
#[derive(Clone, Debug, Default)]
pub struct AddressSet {
    addresses: Vec<IpAddr>,
    more: bool,
}

impl AddressSet {
    pub fn insert(&mut self, address: IpAddr) {
        if self.addresses.contains(&address) {
            return;
        }
        if self.addresses.len() < MAX_CLIENT_ADDRESSES {
            self.addresses.push(address);
        } else {
            self.more = true;
        }
    }

    pub fn into_parts(self) -> (Vec<IpAddr>, bool) {
        (self.addresses, self.more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_back_from_their_names() {
        for kind in AuditKind::ALL {
            assert_eq!(AuditKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AuditKind::parse("handouts"), None);
    }

    #[test]
    fn addresses_are_bounded_and_read_back() {
        let mut set = AddressSet::default();
        for last in 0..20u8 {
            set.insert(IpAddr::from([10, 0, 0, last % 12]));
        }
        let (addresses, more) = set.into_parts();
        assert_eq!(addresses.len(), MAX_CLIENT_ADDRESSES);
        assert!(more);
        let record = AuditRecord {
            client_addresses: addresses.clone(),
            more_addresses: more,
            ..AuditRecord::default()
        };
        let text = record.addresses_text().expect("addresses");
        assert!(text.ends_with(",+"), "{text}");
        let mut read = AuditRecord::default();
        read.set_addresses_text(&text);
        assert_eq!(read.client_addresses, addresses);
        assert!(read.more_addresses);
    }

    #[test]
    fn a_few_addresses_are_kept_without_mark() {
        let mut set = AddressSet::default();
        set.insert(IpAddr::from([127, 0, 0, 1]));
        set.insert(IpAddr::from([127, 0, 0, 1]));
        set.insert("::1".parse().expect("address"));
        let (addresses, more) = set.into_parts();
        assert_eq!(addresses.len(), 2);
        assert!(!more);
    }
}
