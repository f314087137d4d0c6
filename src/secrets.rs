//! Secrets: API keys and the database passwords of PostgreSQL sources; where they come from, and how the ones
//! given to us are kept encrypted at rest.
//!
//! Secrets are `SecretString`s from the moment they are read; nothing here formats one into a message. Stored
//! secrets are sealed with XChaCha20-Poly1305 under a master key (from `SEGMENT_EXPORTER_MASTER_KEY` or a 0600 key
//! file beside the store), with associated data naming what they belong to (the connection name; for a segment's
//! password its id and its source), so a sealed secret cannot be moved to another connection, another segment or
//! another database server. The others are references (an environment variable, a file) read at each use.

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};

use crate::store::{Channel, Connection, KeySource, Segment, SourcePassword};

pub const MASTER_KEY_ENV: &str = "SEGMENT_EXPORTER_MASTER_KEY";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the API key for connection '{connection}' comes from environment variable {var}, which is not set. Set it in the environment of this process (for systemd: Environment= or LoadCredential= with --api-key-file).")]
    EnvMissing { connection: String, var: String },
    #[error("cannot read the API key file {path} for connection '{connection}': {cause}. Check the path and its permissions.")]
    FileUnreadable { connection: String, path: String, cause: String },
    #[error("the API key for connection '{connection}' is empty ({from}). Put the key there.")]
    Empty { connection: String, from: String },
    #[error("the database password of segment '{segment}' comes from environment variable {var}, which is not set. Set it in the environment of this process (for systemd: Environment=, or LoadCredential= with --password-file), or change where it comes from with `segment-exporter segment edit '{segment}' --password-env VAR` or `--password-file PATH`.")]
    PasswordEnvMissing { segment: String, var: String },
    #[error("cannot read the database password file {path} of segment '{segment}': {cause}. Check the path and its permissions, or change it with `segment-exporter segment edit '{segment}' --password-file PATH`.")]
    PasswordFileUnreadable { segment: String, path: String, cause: String },
    #[error("the database password of segment '{segment}' is empty ({from}). Put the password there.")]
    PasswordEmpty { segment: String, from: String },
    #[error(
        "{MASTER_KEY_ENV} must be 64 hexadecimal characters (a 32-byte key). Generate one with `openssl rand -hex 32`."
    )]
    BadMasterKeyEnv,
    #[error("the master key file {path} is not valid: {cause}. It must hold 64 hexadecimal characters; restore it from backup (without it, stored API keys and database passwords cannot be read).")]
    BadMasterKeyFile { path: PathBuf, cause: String },
    #[error("cannot create the master key file {path}: {cause}")]
    CreateMasterKey { path: PathBuf, cause: String },
    #[error("the stored API key of connection '{connection}' cannot be decrypted with this master key. Use the master key it was saved with, or add the connection again.")]
    Decrypt { connection: String },
    #[error("the stored database password of segment '{segment}' cannot be decrypted with this master key. Use the master key it was saved with, or give the password again (`segment-exporter segment edit '{segment}' --source URL-WITH-PASSWORD`, or --password-env / --password-file).")]
    PasswordDecrypt { segment: String },
    #[error("the {which} of channel '{channel}' {problem}. Give it again with `segment-exporter notify remove {channel}` and `notify add`, or fix {from}.")]
    Channel { channel: String, which: &'static str, from: String, problem: String },
    #[error("the master key file {path} is missing, but the secrets stored for {} are sealed with it. Nothing was created or changed. Restore the file from backup (or set {MASTER_KEY_ENV}); if the key is lost for good, add those connections again and give those segments their password again (`segment edit NAME --source URL-WITH-PASSWORD`, or --password-env / --password-file).", .owners.join(", "))]
    MasterKeyMissing { path: PathBuf, owners: Vec<String> },
    #[error("the master key ({from}) is not the key the stored secrets were sealed with: it does not open the secret stored for {owner}. Nothing was stored. Restore the right master key file (or {MASTER_KEY_ENV}) and try again.")]
    WrongMasterKey { from: String, owner: String },
}

/// A secret sealed in the store, as [`MasterKey::for_sealing`] checks it: what it belongs to (for messages, e.g.
/// "connection 'prod'") and what it was sealed with.
pub struct Sealed<'a> {
    pub owner: String,
    pub associated_data: Vec<u8>,
    pub ciphertext: &'a [u8],
    pub nonce: &'a [u8],
}

/// Every secret sealed in the store: stored API keys, stored database passwords, and notification channels' URLs
/// and signing secrets.
pub fn sealed_secrets<'a>(
    connections: &'a [Connection],
    segments: &'a [Segment],
    channels: &'a [Channel],
) -> Vec<Sealed<'a>> {
    let keys = connections.iter().filter_map(|c| match &c.key {
        KeySource::Stored { ciphertext, nonce } => Some(Sealed {
            owner: format!("connection '{}'", c.name),
            associated_data: c.name.as_bytes().to_vec(),
            ciphertext,
            nonce,
        }),
        _ => None,
    });
    let passwords = segments.iter().filter_map(|s| match &s.password {
        SourcePassword::Sealed { ciphertext, nonce } => Some(Sealed {
            owner: format!("segment '{}'", s.name),
            associated_data: password_associated_data(s.id, &s.source),
            ciphertext,
            nonce,
        }),
        _ => None,
    });
    let channel_secrets = channels.iter().flat_map(|c| {
        let url = c.url.as_ref().map(|u| Sealed {
            owner: format!("channel '{}'", c.name),
            associated_data: channel_associated_data(&c.name, ChannelSecret::Url),
            ciphertext: &u.ciphertext,
            nonce: &u.nonce,
        });
        let secret = match &c.secret {
            Some(KeySource::Stored { ciphertext, nonce }) => Some(Sealed {
                owner: format!("channel '{}'", c.name),
                associated_data: channel_associated_data(&c.name, ChannelSecret::SigningSecret),
                ciphertext,
                nonce,
            }),
            _ => None,
        };
        url.into_iter().chain(secret)
    });
    keys.chain(passwords).chain(channel_secrets).collect()
}

/// Which of a channel's secrets: its URL (a credential of its own) or its signing secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelSecret {
    Url,
    SigningSecret,
}

/// What a channel's secret is sealed with: the channel's name and which secret it is.
fn channel_associated_data(channel: &str, which: ChannelSecret) -> Vec<u8> {
    let which = match which {
        ChannelSecret::Url => "url",
        ChannelSecret::SigningSecret => "signing-secret",
    };
    format!("channel\0{channel}\0{which}").into_bytes()
}

/// What a segment's password is sealed with: its id and its source (without password), so the sealed password
/// opens only for this segment and this server. The NUL bytes keep it apart from any connection name.
fn password_associated_data(segment_id: i64, source: &str) -> Vec<u8> {
    format!("segment-password\0{segment_id}\0{source}").into_bytes()
}

/// The key that seals stored API keys and database passwords.
pub struct MasterKey(chacha20poly1305::Key);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// The master key from the environment, else from `path`, creating that file (mode 0600) when `create`.
    pub fn load(path: &Path, create: bool) -> Result<MasterKey, SecretError> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            return parse_hex_key(&text).map(MasterKey).ok_or(SecretError::BadMasterKeyEnv);
        }
        match std::fs::read_to_string(path) {
            Ok(text) => parse_hex_key(&text).map(MasterKey).ok_or_else(|| SecretError::BadMasterKeyFile {
                path: path.into(),
                cause: "not 64 hexadecimal characters".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => Self::create(path),
            Err(e) => Err(SecretError::BadMasterKeyFile { path: path.into(), cause: e.to_string() }),
        }
    }

    /// The master key to seal a new secret with. It is created only while nothing in the store is sealed yet:
    /// creating a fresh one beside sealed API keys or passwords would leave them unreadable for good. An existing
    /// key must open the secrets already sealed.
    pub fn for_sealing(path: &Path, sealed: &[Sealed<'_>]) -> Result<MasterKey, SecretError> {
        let master = Self::load(path, sealed.is_empty()).map_err(|e| match e {
            SecretError::BadMasterKeyFile { .. } if std::env::var_os(MASTER_KEY_ENV).is_none() && !path.exists() => {
                SecretError::MasterKeyMissing {
                    path: path.into(),
                    owners: sealed.iter().map(|s| s.owner.clone()).collect(),
                }
            }
            other => other,
        })?;
        if let Some(first) = sealed.first() {
            if master.open_with(&first.associated_data, first.ciphertext, first.nonce).is_none() {
                let from = match std::env::var_os(MASTER_KEY_ENV) {
                    Some(_) => MASTER_KEY_ENV.to_string(),
                    None => path.display().to_string(),
                };
                return Err(SecretError::WrongMasterKey { from, owner: first.owner.clone() });
            }
        }
        Ok(master)
    }

    /// Loads the master key that sealed `owner`'s secret, saying which secret needs it when the file is missing.
    fn for_opening(path: &Path, owner: String) -> Result<MasterKey, SecretError> {
        Self::load(path, false).map_err(|e| match e {
            SecretError::BadMasterKeyFile { path, .. } if !path.exists() => {
                SecretError::MasterKeyMissing { path, owners: vec![owner] }
            }
            other => other,
        })
    }

    fn create(path: &Path) -> Result<MasterKey, SecretError> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let err = |e: std::io::Error| SecretError::CreateMasterKey { path: path.into(), cause: e.to_string() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(err)?;
        file.write_all(hex::encode(key).as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        Ok(MasterKey(key))
    }

    /// The check value a PostgreSQL store keeps, sealed with its master key (nonce, then ciphertext), so that a
    /// process with another key is refused when it opens the store, not at the first secret it needs.
    pub fn seal_check(&self) -> Vec<u8> {
        let (ciphertext, nonce) = self.seal_with(CHECK_AAD, &SecretString::from(CHECK_TEXT));
        [nonce, ciphertext].concat()
    }

    /// Whether this key opens the store's check value.
    pub fn opens_check(&self, sealed: &[u8]) -> bool {
        sealed.len() > 24
            && self
                .open_with(CHECK_AAD, &sealed[24..], &sealed[..24])
                .is_some_and(|text| text.expose_secret() == CHECK_TEXT)
    }

    /// Seals an API key for a connection; returns (ciphertext, nonce).
    pub fn seal(&self, connection: &str, api_key: &SecretString) -> (Vec<u8>, Vec<u8>) {
        self.seal_with(connection.as_bytes(), api_key)
    }

    pub fn open(&self, connection: &str, ciphertext: &[u8], nonce: &[u8]) -> Result<SecretString, SecretError> {
        self.open_with(connection.as_bytes(), ciphertext, nonce)
            .ok_or_else(|| SecretError::Decrypt { connection: connection.to_string() })
    }

    /// Seals a channel's URL or signing secret; returns (ciphertext, nonce).
    pub fn seal_channel_secret(
        &self,
        channel: &str,
        which: ChannelSecret,
        secret: &SecretString,
    ) -> (Vec<u8>, Vec<u8>) {
        self.seal_with(&channel_associated_data(channel, which), secret)
    }

    /// Seals the database password of segment `segment_id` whose stored source (without password) is `source`.
    pub fn seal_source_password(&self, segment_id: i64, source: &str, password: &SecretString) -> SourcePassword {
        let (ciphertext, nonce) = self.seal_with(&password_associated_data(segment_id, source), password);
        SourcePassword::Sealed { ciphertext, nonce }
    }

    fn seal_with(&self, associated_data: &[u8], secret: &SecretString) -> (Vec<u8>, Vec<u8>) {
        let cipher = XChaCha20Poly1305::new(&self.0);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload { msg: secret.expose_secret().as_bytes(), aad: associated_data };
        let ciphertext = cipher.encrypt(&nonce, payload).expect("XChaCha20-Poly1305 encryption cannot fail");
        (ciphertext, nonce.to_vec())
    }

    fn open_with(&self, associated_data: &[u8], ciphertext: &[u8], nonce: &[u8]) -> Option<SecretString> {
        if nonce.len() != 24 {
            return None;
        }
        let cipher = XChaCha20Poly1305::new(&self.0);
        let plain =
            cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: associated_data }).ok()?;
        String::from_utf8(plain).map(SecretString::from).ok()
    }
}

/// What a store's check value holds, and what it is sealed for.
const CHECK_TEXT: &str = "segment-exporter master key check";
const CHECK_AAD: &[u8] = b"store-master-key-check";

fn parse_hex_key(text: &str) -> Option<chacha20poly1305::Key> {
    let bytes = hex::decode(text.trim()).ok()?;
    (bytes.len() == 32).then(|| *chacha20poly1305::Key::from_slice(&bytes))
}

/// Reads an API key from a file: the first line, trimmed (systemd credentials and secret mounts often end in a newline).
pub fn read_key_file(connection: &str, path: &str) -> Result<SecretString, SecretError> {
    let path = &expand_credentials_dir(connection, path)?;
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::FileUnreadable {
        connection: connection.into(),
        path: path.into(),
        cause: e.kind().to_string(),
    })?;
    non_empty(connection, &format!("file {path}"), text.lines().next().unwrap_or("").trim())
}

/// The systemd credentials directory placeholder: a key file given as `$CREDENTIALS_DIRECTORY/NAME` is read from
/// wherever systemd put the credential (`LoadCredential=`) for this run of the service.
pub const CREDENTIALS_DIR: &str = "$CREDENTIALS_DIRECTORY";

fn expand_credentials_dir(connection: &str, path: &str) -> Result<String, SecretError> {
    let Some(rest) = path.strip_prefix(CREDENTIALS_DIR) else { return Ok(path.to_string()) };
    match std::env::var("CREDENTIALS_DIRECTORY") {
        Ok(dir) => Ok(format!("{dir}{rest}")),
        Err(_) => Err(SecretError::FileUnreadable {
            connection: connection.into(),
            path: path.into(),
            cause: CREDENTIALS_DIR_UNSET.into(),
        }),
    }
}

const CREDENTIALS_DIR_UNSET: &str = "CREDENTIALS_DIRECTORY is not set: this is a systemd credential, readable only \
                                     inside the service (or a `systemd-run -p LoadCredential=...` command)";

fn non_empty(connection: &str, from: &str, key: &str) -> Result<SecretString, SecretError> {
    if key.is_empty() {
        Err(SecretError::Empty { connection: connection.into(), from: from.into() })
    } else {
        Ok(SecretString::from(key.to_string()))
    }
}

/// Reads an API key from an environment variable.
pub fn read_key_env(connection: &str, var: &str) -> Result<SecretString, SecretError> {
    let value =
        std::env::var(var).map_err(|_| SecretError::EnvMissing { connection: connection.into(), var: var.into() })?;
    non_empty(connection, &format!("environment variable {var}"), value.trim())
}

/// The API key of a stored connection, read from wherever the connection says.
pub fn resolve_api_key(conn: &Connection, master_key_path: &Path) -> Result<SecretString, SecretError> {
    match &conn.key {
        KeySource::Env(var) => read_key_env(&conn.name, var),
        KeySource::File(path) => read_key_file(&conn.name, path),
        KeySource::Stored { ciphertext, nonce } => {
            let master = MasterKey::for_opening(master_key_path, format!("connection '{}'", conn.name))?;
            master.open(&conn.name, ciphertext, nonce)
        }
    }
}

/// A channel's URL or signing secret, read at each use: opened with the master key when sealed, else from the
/// environment variable or file the channel names.
pub fn resolve_channel_secret(
    channel: &Channel,
    which: ChannelSecret,
    master_key_path: &Path,
) -> Result<SecretString, SecretError> {
    let what = match which {
        ChannelSecret::Url => "URL",
        ChannelSecret::SigningSecret => "signing secret",
    };
    let fail = |from: String, problem: &str| SecretError::Channel {
        channel: channel.name.clone(),
        which: what,
        from,
        problem: problem.to_string(),
    };
    let sealed = match which {
        ChannelSecret::Url => channel.url.as_ref().map(|u| (u.ciphertext.as_slice(), u.nonce.as_slice())),
        ChannelSecret::SigningSecret => match &channel.secret {
            Some(KeySource::Env(var)) => {
                let value = std::env::var(var).map_err(|_| {
                    fail(format!("the environment variable {var}"), &format!("comes from {var}, which is not set"))
                })?;
                return channel_secret(value, || fail(format!("the environment variable {var}"), "is empty"));
            }
            Some(KeySource::File(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("the file {path}"), &format!("cannot be read from {path}: {e}")))?;
                let line = text.lines().next().unwrap_or_default().trim().to_string();
                return channel_secret(line, || fail(format!("the file {path}"), "is empty"));
            }
            Some(KeySource::Stored { ciphertext, nonce }) => Some((ciphertext.as_slice(), nonce.as_slice())),
            None => None,
        },
    };
    let (ciphertext, nonce) = sealed.ok_or_else(|| fail("the channel".into(), "is not set"))?;
    let master = MasterKey::for_opening(master_key_path, format!("channel '{}'", channel.name))?;
    master
        .open_with(&channel_associated_data(&channel.name, which), ciphertext, nonce)
        .ok_or_else(|| fail("the master key".into(), "cannot be decrypted with this master key"))
}

fn channel_secret(value: String, empty: impl FnOnce() -> SecretError) -> Result<SecretString, SecretError> {
    if value.trim().is_empty() {
        return Err(empty());
    }
    Ok(SecretString::from(value))
}

/// The database password of a stored segment, read from wherever the segment says, at each use. `None` when it
/// has none kept apart (a store not yet upgraded may still have it inside the source, which then works as before).
pub fn resolve_source_password(segment: &Segment, master_key_path: &Path) -> Result<Option<SecretString>, SecretError> {
    resolve_password_of(&segment.name, segment.id, &segment.source, &segment.password, master_key_path)
}

/// The password `password` of segment `name` (id `id`, stored source `source`).
pub fn resolve_password_of(
    name: &str,
    id: i64,
    source: &str,
    password: &SourcePassword,
    master_key_path: &Path,
) -> Result<Option<SecretString>, SecretError> {
    match password {
        SourcePassword::None => Ok(None),
        SourcePassword::Env(var) => read_password_env(name, var).map(Some),
        SourcePassword::File(path) => read_password_file(name, path).map(Some),
        SourcePassword::Sealed { ciphertext, nonce } => {
            let master = MasterKey::for_opening(master_key_path, format!("segment '{name}'"))?;
            master
                .open_with(&password_associated_data(id, source), ciphertext, nonce)
                .map(Some)
                .ok_or_else(|| SecretError::PasswordDecrypt { segment: name.to_string() })
        }
    }
}

/// Reads a segment's database password from an environment variable, exactly as it is there.
pub fn read_password_env(segment: &str, var: &str) -> Result<SecretString, SecretError> {
    let value =
        std::env::var(var).map_err(|_| SecretError::PasswordEnvMissing { segment: segment.into(), var: var.into() })?;
    if value.is_empty() {
        return Err(SecretError::PasswordEmpty {
            segment: segment.into(),
            from: format!("environment variable {var}"),
        });
    }
    Ok(SecretString::from(value))
}

/// Reads a segment's database password from a file: its first line, without the line ending (spaces are kept, as a
/// password may have them). `$CREDENTIALS_DIRECTORY/NAME` is read from systemd's credentials directory.
pub fn read_password_file(segment: &str, path: &str) -> Result<SecretString, SecretError> {
    let unreadable = |path: &str, cause: String| SecretError::PasswordFileUnreadable {
        segment: segment.into(),
        path: path.into(),
        cause,
    };
    let path = &match path.strip_prefix(CREDENTIALS_DIR) {
        None => path.to_string(),
        Some(rest) => match std::env::var("CREDENTIALS_DIRECTORY") {
            Ok(dir) => format!("{dir}{rest}"),
            Err(_) => return Err(unreadable(path, CREDENTIALS_DIR_UNSET.into())),
        },
    };
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e.kind().to_string()))?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(SecretError::PasswordEmpty { segment: segment.into(), from: format!("file {path}") });
    }
    Ok(SecretString::from(password.to_string()))
}

/// The last four characters of a key, for `connection show`; only for keys of 12 characters or more.
pub fn last4(key: &SecretString) -> Option<String> {
    let chars: Vec<char> = key.expose_secret().chars().collect();
    (chars.len() >= 12).then(|| chars[chars.len() - 4..].iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_for_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load(&dir.path().join("m.key"), true).unwrap();
        let (ct, nonce) = master.seal("prod", &SecretString::from("abcdef0123456789".to_string()));
        assert!(!ct.windows(6).any(|w| w == b"abcdef"), "ciphertext must not hold the key");
        assert_eq!(master.open("prod", &ct, &nonce).unwrap().expose_secret(), "abcdef0123456789");
        assert!(matches!(master.open("other", &ct, &nonce), Err(SecretError::Decrypt { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn the_master_key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/m.key");
        let a = MasterKey::load(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = MasterKey::load(&path, false).unwrap();
        assert_eq!(a.0, b.0);
    }

    #[test]
    fn a_missing_master_key_is_not_replaced_while_sealed_keys_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.key");
        let first = MasterKey::for_sealing(&path, &[]).unwrap();
        let (ct, nonce) = first.seal("prod", &SecretString::from("abcdef0123456789".to_string()));
        let sealed = [Sealed {
            owner: "connection 'prod'".into(),
            associated_data: b"prod".to_vec(),
            ciphertext: &ct,
            nonce: &nonce,
        }];
        assert!(MasterKey::for_sealing(&path, &sealed).is_ok(), "the right key is accepted");

        std::fs::rename(&path, dir.path().join("moved.key")).unwrap();
        let err = MasterKey::for_sealing(&path, &sealed).unwrap_err();
        assert!(
            matches!(&err, SecretError::MasterKeyMissing { owners, .. } if owners == &["connection 'prod'"]),
            "{err}"
        );
        assert!(!path.exists(), "no new master key was created");

        std::fs::write(&path, hex::encode([7u8; 32])).unwrap();
        let err = MasterKey::for_sealing(&path, &sealed).unwrap_err();
        assert!(matches!(err, SecretError::WrongMasterKey { .. }), "{err}");
    }

    #[test]
    fn a_sealed_source_password_opens_only_for_its_segment_and_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load(&dir.path().join("m.key"), true).unwrap();
        let sealed =
            master.seal_source_password(7, "postgres://app@db/crm", &SecretString::from("pw-1234".to_string()));
        let SourcePassword::Sealed { ciphertext, nonce } = &sealed else { panic!("sealed") };
        let open = |id, source: &str| master.open_with(&password_associated_data(id, source), ciphertext, nonce);
        assert_eq!(open(7, "postgres://app@db/crm").unwrap().expose_secret(), "pw-1234");
        assert!(open(8, "postgres://app@db/crm").is_none(), "another segment");
        assert!(open(7, "postgres://app@evil.example/crm").is_none(), "another server");
        assert!(master.open_with(b"7", ciphertext, nonce).is_none(), "a connection's associated data");
    }

    #[test]
    fn last4_is_shown_only_for_long_keys() {
        assert_eq!(last4(&SecretString::from("0123456789abcdef".to_string())).as_deref(), Some("cdef"));
        assert_eq!(last4(&SecretString::from("short".to_string())), None);
    }

    #[test]
    fn a_credentials_directory_path_needs_systemds_variable() {
        let err = read_key_file("c", "$CREDENTIALS_DIRECTORY/iterable-api-key").unwrap_err();
        assert!(err.to_string().contains("CREDENTIALS_DIRECTORY is not set"), "{err}");
    }

    #[test]
    fn key_files_are_trimmed_and_empty_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "secret-key-value\n").unwrap();
        assert_eq!(read_key_file("c", p.to_str().unwrap()).unwrap().expose_secret(), "secret-key-value");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_key_file("c", p.to_str().unwrap()), Err(SecretError::Empty { .. })));
    }
}
