//! API tokens and passwords. A token is `se_<account id>_<43 characters of base64url>` (256 random bits): the id
//! says whose it is, so the stored hash is fetched by id and compared in constant time. Only the SHA-256 of the
//! random part is stored (the part is high-entropy, so a plain hash is enough); the token is shown once. Passwords
//! are hashed with argon2id and a random salt.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError, User};

const PREFIX: &str = "se_";
/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// A freshly made token: the text shown once, and the hash that is stored.
pub struct NewToken {
    pub token: SecretString,
    pub hash: String,
}

/// Makes a new token for the account `user_id`.
pub fn new_token(user_id: i64) -> NewToken {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    NewToken { hash: hash_secret(&secret), token: SecretString::from(format!("{PREFIX}{user_id}_{secret}")) }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The account a token belongs to, or None when it is not a valid token now (malformed, revoked, rotated, or of an
/// account that is gone).
pub async fn authenticate(store: &Store, token: &str) -> Result<Option<User>, StoreError> {
    let parsed = token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(id, secret)| Some((id.parse::<i64>().ok()?, secret)));
    let Some((id, secret)) = parsed else { return Ok(None) };
    let presented = hash_secret(secret);
    let stored = store.user_token_hash(id).await?;
    // Compare against something of the same length even when the account does not exist.
    let expected = stored.clone().unwrap_or_else(|| "0".repeat(presented.len()));
    let equal: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
    if !equal || stored.is_none() {
        return Ok(None);
    }
    store.user_by_id(id).await
}

/// What sign-in attempts with the user name `name` are throttled and audited by: a hash, so that the store never
/// holds what was typed (people type their password into the name field), the same whether an account has the name
/// or not (the throttle tells nothing of which names exist).
pub fn sign_in_name_key(name: &str) -> String {
    let digest =
        Sha256::new().chain_update(b"segment-exporter sign-in name\0").chain_update(name.as_bytes()).finalize();
    hex::encode(digest)
}

/// A freshly made web console session id: the text that goes into the cookie, and the hash that is stored.
pub struct NewSession {
    pub id: SecretString,
    pub hash: String,
}

/// Makes a new session id (256 random bits, base64url).
pub fn new_session() -> NewSession {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    NewSession { hash: session_hash(&id), id: SecretString::from(id) }
}

/// The stored form of a session id. The id is high-entropy, so a plain SHA-256 is enough, as for tokens; the
/// lookup is by this hash (an index), which reveals nothing of the id itself.
pub fn session_hash(id: &str) -> String {
    hash_secret(id)
}

/// The CSRF token of a session: derived from its id, so it needs no storage and a page that shows it shows
/// nothing that signs anyone in (the id cannot be worked back from it).
pub fn csrf_token(session_id: &str) -> String {
    let digest = Sha256::new().chain_update(b"segment-exporter csrf\0").chain_update(session_id.as_bytes()).finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Whether `presented` is the CSRF token of the session `session_id`, compared in constant time.
pub fn csrf_matches(session_id: &str, presented: &str) -> bool {
    csrf_token(session_id).as_bytes().ct_eq(presented.as_bytes()).into()
}

/// Shortest metrics token accepted: 32 characters, 128 bits or more as hex.
const MIN_METRICS_TOKEN_CHARS: usize = 32;

/// Reads `daemon.metrics_token_file` and keeps only the hash of the token it holds (its first line).
pub fn read_metrics_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read daemon.metrics_token_file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.chars().count() < MIN_METRICS_TOKEN_CHARS {
        return Err(format!(
            "daemon.metrics_token_file {} holds a token of {} characters; use at least {MIN_METRICS_TOKEN_CHARS}, e.g. \
             `openssl rand -hex 32 > FILE`",
            path.display(),
            token.chars().count()
        ));
    }
    Ok(hash_secret(token))
}

/// Whether `presented` is the metrics token whose hash is `stored`, compared in constant time.
pub fn metrics_token_matches(presented: &str, stored: &str) -> bool {
    hash_secret(presented).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Checks a new password's length; the error says what to do.
pub fn check_password(password: &SecretString) -> Result<(), String> {
    let chars = password.expose_secret().chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(format!("the password is {chars} characters long; use at least {MIN_PASSWORD_CHARS}"));
    }
    Ok(())
}

/// The argon2id hash (PHC string, with its salt and parameters) of a password.
pub fn hash_password(password: &SecretString) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any input")
        .to_string()
}

/// Whether a password matches a stored argon2id hash.
pub fn verify_password(password: &SecretString, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| Argon2::default().verify_password(password.expose_secret().as_bytes(), &hash).is_ok())
        .unwrap_or(false)
}

/// Spends the time of one password check against nothing, so a sign-in with an unknown user name (or an account
/// without a password) takes as long as a wrong password and does not tell which names exist.
pub fn verify_no_password(password: &SecretString) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password(&SecretString::from("no account has this password")));
    let _ = verify_password(password, dummy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use crate::store::Role;

    #[tokio::test]
    async fn a_token_works_until_it_is_rotated_and_only_its_hash_is_stored() {
        let (_dir, store) = temp_store().await;
        let user = store.add_user("ann", Role::Admin, "!").await.unwrap();
        let first = new_token(user.id);
        store.set_user_token("ann", &first.hash).await.unwrap();
        let token = first.token.expose_secret().to_string();
        assert!(token.len() >= PREFIX.len() + 43, "256 bits of base64: {}", token.len());
        assert_eq!(authenticate(&store, &token).await.unwrap().unwrap().name, "ann");
        let stored = store.user_token_hash(user.id).await.unwrap().unwrap();
        assert!(!token.contains(&stored) && !stored.contains(token.splitn(3, '_').nth(2).unwrap()));

        let second = new_token(user.id);
        store.set_user_token("ann", &second.hash).await.unwrap();
        assert!(authenticate(&store, &token).await.unwrap().is_none(), "the rotated token stops at once");
        assert!(authenticate(&store, second.token.expose_secret()).await.unwrap().is_some());
        for bad in ["", "se_", "se_1_", "se_x_abc", "Bearer x", &token.replace("se_1_", "se_2_")] {
            assert!(authenticate(&store, bad).await.unwrap().is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_session_id_has_256_bits_and_its_csrf_token_matches_only_it() {
        let a = new_session();
        let b = new_session();
        let id = a.id.expose_secret();
        assert_eq!(id.len(), 43, "256 bits of base64url: {id}");
        assert_ne!(id, b.id.expose_secret());
        assert_eq!(a.hash, session_hash(id));
        assert!(!a.hash.contains(id));
        let csrf = csrf_token(id);
        assert!(csrf_matches(id, &csrf));
        assert!(!csrf_matches(b.id.expose_secret(), &csrf));
        assert!(!csrf_matches(id, ""));
        assert!(!csrf.contains(id) && csrf != a.hash);
    }

    #[test]
    fn a_metrics_token_file_needs_a_long_token_and_only_its_hash_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("metrics.token");
        std::fs::write(&file, "short\n").unwrap();
        let err = read_metrics_token(&file).unwrap_err();
        assert!(err.contains("5 characters") && err.contains("metrics_token_file"), "{err}");
        let token = "0123456789abcdef0123456789abcdef";
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let stored = read_metrics_token(&file).unwrap();
        assert!(!stored.contains(token));
        assert!(metrics_token_matches(token, &stored));
        assert!(!metrics_token_matches("0123456789abcdef0123456789abcdeF", &stored));
    }

    #[test]
    fn a_password_is_stored_as_argon2id_and_verifies_only_itself() {
        let password = SecretString::from("correct horse battery staple");
        let hash = hash_password(&password);
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(verify_password(&password, &hash));
        assert!(!verify_password(&SecretString::from("correct horse battery stapler"), &hash));
        assert!(check_password(&SecretString::from("short")).is_err());
    }
}
