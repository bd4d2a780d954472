use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{CryptoError, SealContext};
use crate::domain::Secret;

/// First byte of every sealed value, so that a later format can be told apart.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const HEADER: &str = "# tokenmanager encryption keyring: one key per line, \"<id> <base64 of 32 bytes>\".\n\
# The last key encrypts new values; every key listed decrypts. Keep this file secret (mode 0600).\n";

struct NamedKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The keys in force: the last one seals, any one opens.
pub struct Keyring {
    keys: Vec<NamedKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let text = fs::read_to_string(path).map_err(|source| CryptoError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, CryptoError> {
        let format_error = |line: usize, problem: String| CryptoError::Format {
            path: path.display().to_string(),
            line,
            problem,
        };
        let mut keys: Vec<NamedKey> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(id), Some(encoded), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format_error(
                    index + 1,
                    "expected \"<id> <base64 key>\"".into(),
                ));
            };
            if !valid_key_id(id) {
                return Err(format_error(
                    index + 1,
                    format!("key id '{id}' must be 1-64 characters of A-Z a-z 0-9 . _ -"),
                ));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(format_error(
                    index + 1,
                    format!("key id '{id}' appears twice"),
                ));
            }
            let bytes = STANDARD
                .decode(encoded)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    format_error(index + 1, format!("key '{id}' is not 32 bytes of base64"))
                })?;
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes));
            keys.push(NamedKey {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(CryptoError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(Self { keys })
    }

    pub fn newest_key_id(&self) -> &str {
        &self.keys.last().expect("a keyring is never empty").id
    }

    /// The ids of the keys, oldest first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// Seals under the newest key; returns that key's id, which the row records.
    pub fn seal(&self, context: SealContext<'_>, plaintext: &Secret) -> (String, Vec<u8>) {
        let key = self.keys.last().expect("a keyring is never empty");
        (key.id.clone(), seal_with(&key.cipher, context, plaintext))
    }

    /// Seals under the named key (used to keep a row's ciphertexts under one key).
    pub fn seal_with_key(
        &self,
        key_id: &str,
        context: SealContext<'_>,
        plaintext: &Secret,
    ) -> Result<Vec<u8>, CryptoError> {
        let key = self.key(key_id)?;
        Ok(seal_with(&key.cipher, context, plaintext))
    }

    pub fn open(
        &self,
        key_id: &str,
        context: SealContext<'_>,
        sealed: &[u8],
    ) -> Result<Secret, CryptoError> {
        let key = self.key(key_id)?;
        let column = context.column.label();
        let (&format, rest) = sealed.split_first().ok_or(CryptoError::BadFormat(column))?;
        if format != FORMAT_V1 || rest.len() < NONCE_LEN {
            return Err(CryptoError::BadFormat(column));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let aad = context.associated_data();
        let plaintext = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Tampered(column))?;
        String::from_utf8(plaintext)
            .map(Secret::new)
            .map_err(|_| CryptoError::BadFormat(column))
    }

    fn key(&self, key_id: &str) -> Result<&NamedKey, CryptoError> {
        self.keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))
    }
}

fn seal_with(cipher: &Aes256Gcm, context: SealContext<'_>, plaintext: &Secret) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = context.associated_data();
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext.expose().as_bytes(),
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption of a bounded in-memory value cannot fail");
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    sealed.push(FORMAT_V1);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The keyring file on disk: creating it and adding keys, each change written whole to a
/// temporary file and renamed into place, under an exclusive lock so two `rotate-key` runs cannot
/// lose each other's key.
pub struct KeyringFile {
    path: PathBuf,
}

impl KeyringFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a keyring with one fresh key; refuses to replace an existing file.
    pub fn create(&self) -> Result<String, CryptoError> {
        let _lock = self.lock()?;
        if self.path.exists() {
            return Err(self.write_error(std::io::ErrorKind::AlreadyExists.into()));
        }
        let id = "k1".to_owned();
        self.replace_with(&format!("{HEADER}{}", key_line(&id)))?;
        Ok(id)
    }

    /// Appends a fresh key, which becomes the newest, and returns its id. Without an explicit id
    /// the next free `k<n>` is used.
    pub fn add_key(&self, requested_id: Option<&str>) -> Result<String, CryptoError> {
        let _lock = self.lock()?;
        let text = fs::read_to_string(&self.path).map_err(|source| CryptoError::Read {
            path: self.path.display().to_string(),
            source,
        })?;
        let current = Keyring::parse(&text, &self.path)?;
        let id = match requested_id {
            Some(id) => id.to_owned(),
            None => next_free_id(&current),
        };
        let mut updated = text.clone();
        if !updated.is_empty() && !updated.ends_with('\n') {
            updated.push('\n');
        }
        updated.push_str(&key_line(&id));
        // Parsing the result validates the requested id (format, uniqueness) before anything is written.
        Keyring::parse(&updated, &self.path)?;
        self.replace_with(&updated)?;
        Ok(id)
    }

    fn lock(&self) -> Result<File, CryptoError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| self.write_error(e))?;
        }
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| self.write_error(e))?;
        file.lock().map_err(|e| self.write_error(e))?;
        Ok(file)
    }

    fn replace_with(&self, text: &str) -> Result<(), CryptoError> {
        let mut temp_path = self.path.clone().into_os_string();
        temp_path.push(format!(".tmp-{}", std::process::id()));
        let temp_path = PathBuf::from(temp_path);
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&temp_path)?;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temp_path, &self.path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&temp_path);
            self.write_error(e)
        })
    }

    fn write_error(&self, source: std::io::Error) -> CryptoError {
        CryptoError::Write {
            path: self.path.display().to_string(),
            source,
        }
    }
}

fn key_line(id: &str) -> String {
    let key = Aes256Gcm::generate_key(&mut OsRng);
    format!("{id} {}\n", STANDARD.encode(key))
}

fn next_free_id(keyring: &Keyring) -> String {
    (1..)
        .map(|n| format!("k{n}"))
        .find(|id| !keyring.has_key(id))
        .expect("an unbounded range always has a free id")
}

/// The keyring a running process uses, re-read from its file on reload (SIGHUP) and whenever a row
/// names a key it does not know yet, so that a `rotate-key` run elsewhere never makes rows unreadable.
pub struct SharedKeyring {
    /// The file in force: a reload may name another one.
    path: RwLock<PathBuf>,
    current: RwLock<Arc<Keyring>>,
}

impl std::fmt::Debug for SharedKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeyring")
            .field(
                "path",
                &*self.path.read().unwrap_or_else(|e| e.into_inner()),
            )
            .finish()
    }
}

impl SharedKeyring {
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, CryptoError> {
        let path = path.into();
        let keyring = Keyring::load(&path)?;
        Ok(Self {
            path: RwLock::new(path),
            current: RwLock::new(Arc::new(keyring)),
        })
    }

    pub fn current(&self) -> Arc<Keyring> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the file in force; on error the keys in force stay as they were.
    pub fn reload(&self) -> Result<Arc<Keyring>, CryptoError> {
        let path = self.path.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.reload_from(&path)
    }

    /// Reads `path` (the configuration's `EncryptionKeyFile`, which a reload may change) and
    /// puts it in force; on error the file and keys in force stay as they were.
    pub fn reload_from(&self, path: &Path) -> Result<Arc<Keyring>, CryptoError> {
        let fresh = Arc::new(Keyring::load(path)?);
        *self.path.write().unwrap_or_else(|e| e.into_inner()) = path.to_owned();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// The keyring that knows `key_id`, reloading once if the one in force does not.
    pub fn with_key(&self, key_id: &str) -> Result<Arc<Keyring>, CryptoError> {
        let current = self.current();
        if current.has_key(key_id) {
            return Ok(current);
        }
        let fresh = self.reload()?;
        if fresh.has_key(key_id) {
            Ok(fresh)
        } else {
            Err(CryptoError::UnknownKey(key_id.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenColumn;

    fn context<'a>(user: &'a str, provider: &'a str, column: TokenColumn) -> SealContext<'a> {
        SealContext {
            user_id: user,
            provider,
            column,
        }
    }

    fn keyring_in(dir: &tempfile::TempDir) -> KeyringFile {
        let file = KeyringFile::new(dir.path().join("keyring"));
        file.create().unwrap();
        file
    }

    #[test]
    fn sealed_values_open_only_in_their_own_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::load(keyring_in(&dir).path()).unwrap();
        let secret = Secret::new("refresh-token-value");
        let here = context("alice", "IAM", TokenColumn::RefreshToken);
        let (key_id, sealed) = keyring.seal(here, &secret);
        assert_eq!(keyring.open(&key_id, here, &sealed).unwrap(), secret);
        assert!(!sealed.windows(7).any(|w| w == b"refresh"));

        for elsewhere in [
            context("bob", "IAM", TokenColumn::RefreshToken),
            context("alice", "CheckIn", TokenColumn::RefreshToken),
            context("alice", "IAM", TokenColumn::AccessToken),
            context("aliceI", "AM", TokenColumn::RefreshToken),
        ] {
            let err = keyring.open(&key_id, elsewhere, &sealed).unwrap_err();
            assert!(matches!(err, CryptoError::Tampered(_)), "{err}");
        }
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            keyring.open(&key_id, here, &flipped),
            Err(CryptoError::Tampered(_))
        ));
        assert!(matches!(
            keyring.open(&key_id, here, &sealed[..5]),
            Err(CryptoError::BadFormat(_))
        ));
    }

    #[test]
    fn the_newest_key_seals_and_every_key_opens() {
        let dir = tempfile::tempdir().unwrap();
        let file = keyring_in(&dir);
        let old = Keyring::load(file.path()).unwrap();
        let here = context("u", "p", TokenColumn::AccessToken);
        let (old_id, old_sealed) = old.seal(here, &Secret::new("a"));

        assert_eq!(file.add_key(None).unwrap(), "k2");
        assert_eq!(file.add_key(Some("2026-11.b")).unwrap(), "2026-11.b");
        let rotated = Keyring::load(file.path()).unwrap();
        assert_eq!(rotated.newest_key_id(), "2026-11.b");
        assert_eq!(
            rotated.open(&old_id, here, &old_sealed).unwrap().expose(),
            "a"
        );
        let (new_id, _) = rotated.seal(here, &Secret::new("b"));
        assert_eq!(new_id, "2026-11.b");
        assert!(matches!(
            old.open("k2", here, &old_sealed),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn keyring_files_are_private_and_ids_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = keyring_in(&dir);
        let mode = fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(file.create().is_err(), "create must not replace a keyring");
        assert!(file.add_key(Some("k1")).is_err(), "duplicate id");
        assert!(file.add_key(Some("bad id")).is_err());
        assert_eq!(Keyring::load(file.path()).unwrap().newest_key_id(), "k1");
    }

    #[test]
    fn malformed_keyrings_are_refused_without_echoing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        for (text, expected) in [
            ("", "holds no key"),
            ("# only a comment\n", "holds no key"),
            ("k1\n", "line 1"),
            ("k1 c2VjcmV0LWJ1dC1zaG9ydA==\n", "not 32 bytes"),
            (
                "k1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nk1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
                "appears twice",
            ),
        ] {
            fs::write(&path, text).unwrap();
            let err = Keyring::load(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("c2VjcmV0"), "{err}");
        }
        let missing = Keyring::load(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(missing, CryptoError::Read { .. }));
    }

    #[test]
    fn a_shared_keyring_learns_keys_added_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let file = keyring_in(&dir);
        let shared = SharedKeyring::load(file.path()).unwrap();
        let id = file.add_key(None).unwrap();
        assert!(!shared.current().has_key(&id));
        assert!(shared.with_key(&id).unwrap().has_key(&id));
        assert_eq!(shared.current().newest_key_id(), id);
        assert!(matches!(
            shared.with_key("nope"),
            Err(CryptoError::UnknownKey(_))
        ));
    }
}
