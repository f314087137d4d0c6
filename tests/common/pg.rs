//! A PostgreSQL database of a test's own on the server at `TEST_POSTGRES_URL` (created with a language collation,
//! as most servers have by default), dropped when the test ends.

pub struct Database {
    /// `postgres://.../se_it_...`: the database's URL.
    pub url: String,
    server: String,
    name: String,
}

/// The server the PostgreSQL tests use; they are marked ignored and `.ci/run` sets it.
pub fn server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test); .ci/run sets it")
}

/// 64 hexadecimal characters: a master key.
pub fn random_hex_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Database {
    pub fn new() -> Database {
        let server = server();
        let name = format!("se_it_{:016x}", rand::random::<u64>());
        super::block_on(async {
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&server).await.unwrap();
            let icu = format!(
                "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            );
            if sqlx::query(&icu).execute(&mut admin).await.is_err() {
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
            }
        });
        let mut url = url::Url::parse(&server).unwrap();
        url.set_path(&name);
        Database { url: url.to_string(), server, name }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            super::block_on(async {
                if let Ok(mut admin) = <sqlx::PgConnection as sqlx::Connection>::connect(&server).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
                }
            })
        })
        .join();
    }
}
