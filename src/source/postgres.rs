//! Reading a segment from PostgreSQL. Owns the single read-only connection, the check of the query's
//! columns and their types before any row is read, and the mapping of PostgreSQL values to JSON:
//! bool, integers and floats as themselves; `numeric` as a JSON number when that number prints back as
//! exactly the same decimal, otherwise as a string (so no digit is ever lost); text-like types, enums and
//! `uuid` as strings; `date` as `YYYY-MM-DD`; `timestamp` and `timestamptz` in Iterable's date format
//! `yyyy-MM-dd HH:mm:ss +00:00` in UTC (a `timestamp` without zone is taken to be UTC already); `json`
//! and `jsonb` as the JSON they hold. Domains map as their base type. Any other type is refused before
//! the first row, with a hint to cast it in the query. The password, kept apart from the URL, is handed to
//! the driver here and never leaves this file in a message.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow, PgTypeInfo, PgTypeKind, PgValueFormat, PgValueRef};
use sqlx::types::Json;
use sqlx::{Column, ConnectOptions, Connection, Decode, Executor, Postgres, Row as _, Statement};
use sqlx::{TypeInfo, ValueRef};
use tokio::sync::mpsc;

use super::confine::{self, Reach, Refusal};
use super::{
    float_value, scrub, select_columns, Batcher, Columns, ReaderStream, Row, RowStream, SourceError, CHANNEL_BATCHES,
};

const OPEN_HINT: &str = "Check the URL, that the server is reachable from here, and the user's credentials.";

/// sqlx has no connect timeout of its own; without one a silent firewall would hang a run forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How one column's values become JSON, chosen once from the column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Uuid,
    Date,
    Timestamp,
    TimestampTz,
    Json,
}

pub(super) async fn read(
    spec: String,
    url: &str,
    password: Option<&SecretString>,
    secrets: &[String],
    query: &str,
    columns: Columns,
    reach: &Reach,
) -> Result<RowStream, SourceError> {
    confine::check_url(&spec, url, reach)?;
    let open_error =
        |cause: String| SourceError::Open { spec: spec.clone(), cause: scrub(&cause, secrets), hint: OPEN_HINT };
    let options = connect_options(url, password).map_err(|error| open_error(error.to_string()))?;
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(connected) => connected.map_err(|error| open_error(error.to_string()))?,
        Err(_) => return Err(open_error(format!("the server did not answer within {} s", CONNECT_TIMEOUT.as_secs()))),
    };
    // A segment query only reads; this turns a mistaken `DELETE ... RETURNING` into an error.
    conn.execute("SET default_transaction_read_only = on").await.map_err(|error| open_error(error.to_string()))?;

    let query_error =
        |cause: String| SourceError::Query { spec: spec.clone(), cause: super::redact_values(&scrub(&cause, secrets)) };
    // Preparing gives column names and types even when the query returns no rows; sqlx caches the
    // statement, so the fetch below does not parse it again.
    let statement = conn.prepare(query).await.map_err(|error| query_error(error.to_string()))?;
    let parameters = match statement.parameters() {
        Some(sqlx::Either::Left(types)) => types.len(),
        Some(sqlx::Either::Right(count)) => count,
        None => 0,
    };
    if parameters > 0 {
        return Err(query_error(format!("it has {parameters} parameter(s), but a segment query takes none")));
    }
    if statement.columns().is_empty() {
        return Err(query_error("it returns no columns; a segment query must be a SELECT".into()));
    }
    let available: Vec<String> = statement.columns().iter().map(|c| c.name().to_owned()).collect();
    let (names, indices) = select_columns(&available, columns)?;
    let decoders = indices
        .iter()
        .zip(&names)
        .map(|(&index, name)| {
            let type_info = statement.columns()[index].type_info();
            decoder_for(type_info).ok_or_else(|| SourceError::UnsupportedType {
                spec: spec.clone(),
                column: name.clone(),
                type_name: type_info.name().to_lowercase(),
                cast_example: format!("{name}::text"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let task = tokio::spawn(pump(
        conn,
        query.to_owned(),
        Columnar { names: names.clone(), indices, decoders },
        spec.clone(),
        secrets.to_vec(),
        Batcher::new(tx),
    ));
    Ok(RowStream { columns: names, batches: ReaderStream::boxed(spec, rx, task) })
}

/// The driver's options for a URL (without password) and the password kept apart.
fn connect_options(url: &str, password: Option<&SecretString>) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let options = match password {
        Some(password) => options.password(password.expose_secret()),
        None => options,
    };
    Ok(match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("segment-exporter"),
    })
}

/// The URL parameters a segment saved over the HTTP API may carry: of those the driver reads (sqlx's
/// `PgConnectOptions::parse_from_url`, matched exactly as it matches them, after percent-decoding), the ones that name
/// no file of this host and no socket. Not on it, so refused: `sslrootcert`, `ssl-root-cert`, `ssl-ca`, `sslcert`,
/// `ssl-cert`, `sslkey`, `ssl-key` (files the driver reads), `host` (a socket folder when it starts with `/`) and
/// `hostaddr` (the host belongs in the URL's host part), and anything the driver does not read (`passfile`, typos).
/// `options` and `options[NAME]` are server settings sent at connection; passwords were taken out before storing.
const NETWORK_PARAMETERS: [&str; 9] = [
    "sslmode",
    "ssl-mode",
    "statement-cache-capacity",
    "port",
    "dbname",
    "user",
    "application_name",
    "options",
    "options[NAME]",
];

/// Whether a PostgreSQL URL names no file and no socket of this host: every parameter on [`NETWORK_PARAMETERS`],
/// and a network host in the URL's host part, as the driver parses it (a host given percent-encoded that decodes to
/// `/...` is a socket folder to the driver; no host at all makes it look for a local socket).
pub(super) fn network_only(url: &str) -> Result<(), Refusal> {
    let refuse = |why: String| {
        Refusal(format!(
            "over the HTTP API a postgres URL may name no file and no socket of this host, but {why}; set such a \
             segment up from the CLI on the host"
        ))
    };
    let parsed = url::Url::parse(url).map_err(|e| refuse(format!("the URL cannot be read ({e})")))?;
    for (key, _) in parsed.query_pairs() {
        let options_entry = key.starts_with("options[") && key.ends_with(']');
        if !options_entry && !NETWORK_PARAMETERS.contains(&&*key) {
            return Err(refuse(format!(
                "it carries the parameter '{key}', and only these may be given: {}",
                NETWORK_PARAMETERS.join(", ")
            )));
        }
    }
    let options = PgConnectOptions::from_str(url).map_err(|e| refuse(format!("the driver cannot read it ({e})")))?;
    match parsed.host_str().filter(|host| !host.is_empty()) {
        None => Err(refuse("it names no host (the driver would look for a local socket)".into())),
        Some(_) if options.get_socket().is_some() || options.get_host().starts_with('/') => Err(refuse(format!(
            "its host is the socket folder {}",
            options.get_socket().map_or_else(|| options.get_host().to_owned(), |s| s.display().to_string())
        ))),
        Some(_) => Ok(()),
    }
}

/// What to take from each row, and how.
struct Columnar {
    names: Vec<String>,
    indices: Vec<usize>,
    decoders: Vec<Decoder>,
}

async fn pump(
    mut conn: PgConnection,
    query: String,
    columns: Columnar,
    spec: String,
    secrets: Vec<String>,
    out: Batcher,
) {
    let mut row_number = 0u64;
    let rows = sqlx::query(&query).fetch(&mut conn).map(|row| {
        row_number += 1;
        match row {
            Ok(row) => convert_row(&row, &columns, &spec, row_number),
            Err(error) => Err(SourceError::Query {
                spec: spec.clone(),
                cause: super::redact_values(&scrub(&error.to_string(), &secrets)),
            }),
        }
    });
    if out.forward(rows).await {
        let _ = conn.close().await;
    }
}

fn convert_row(row: &PgRow, columns: &Columnar, spec: &str, row_number: u64) -> Result<Row, SourceError> {
    let mut values = Vec::with_capacity(columns.indices.len());
    for ((&index, &decoder), name) in columns.indices.iter().zip(&columns.decoders).zip(&columns.names) {
        let converted =
            row.try_get_raw(index).map_err(|error| error.to_string()).and_then(|value| convert_value(value, decoder));
        values.push(converted.map_err(|cause| SourceError::BadValue {
            spec: spec.to_owned(),
            row: row_number,
            column: name.clone(),
            cause: super::redact_values(&cause),
        })?);
    }
    Ok(values)
}

/// Built-in type OIDs (fixed in `pg_type.dat`); extension and user types are recognised by kind or name.
fn decoder_for(type_info: &PgTypeInfo) -> Option<Decoder> {
    let by_oid = type_info.oid().and_then(|oid| match oid.0 {
        16 => Some(Decoder::Bool),
        20 => Some(Decoder::Int8),
        21 => Some(Decoder::Int2),
        23 => Some(Decoder::Int4),
        700 => Some(Decoder::Float4),
        701 => Some(Decoder::Float8),
        1700 => Some(Decoder::Numeric),
        // text, name, bpchar, varchar
        25 | 19 | 1042 | 1043 => Some(Decoder::Text),
        2950 => Some(Decoder::Uuid),
        1082 => Some(Decoder::Date),
        1114 => Some(Decoder::Timestamp),
        1184 => Some(Decoder::TimestampTz),
        114 | 3802 => Some(Decoder::Json),
        _ => None,
    });
    by_oid.or_else(|| match type_info.kind() {
        PgTypeKind::Domain(base) => decoder_for(base),
        // An enum label travels as its text.
        PgTypeKind::Enum(_) => Some(Decoder::Text),
        PgTypeKind::Simple if type_info.name().eq_ignore_ascii_case("citext") => Some(Decoder::Text),
        _ => None,
    })
}

fn convert_value(value: PgValueRef<'_>, decoder: Decoder) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    fn decode<'r, T: Decode<'r, Postgres>>(value: PgValueRef<'r>) -> Result<T, String> {
        T::decode(value).map_err(|error| error.to_string())
    }
    Ok(match decoder {
        Decoder::Bool => Value::from(decode::<bool>(value)?),
        Decoder::Int2 => Value::from(decode::<i16>(value)?),
        Decoder::Int4 => Value::from(decode::<i32>(value)?),
        Decoder::Int8 => Value::from(decode::<i64>(value)?),
        // Through its shortest decimal, so real 0.1 stays 0.1 instead of 0.10000000149011612.
        Decoder::Float4 => {
            let value = decode::<f32>(value)?;
            float_value(value.to_string().parse().unwrap_or(f64::from(value)))
        }
        Decoder::Float8 => float_value(decode::<f64>(value)?),
        Decoder::Numeric => {
            let text = match value.format() {
                PgValueFormat::Binary => numeric_text(value.as_bytes().map_err(|e| e.to_string())?)?,
                PgValueFormat::Text => value.as_str().map_err(|e| e.to_string())?.to_owned(),
            };
            numeric_value(&text)
        }
        Decoder::Text => Value::from(decode::<&str>(value)?),
        Decoder::Uuid => Value::from(match value.format() {
            PgValueFormat::Binary => uuid_text(value.as_bytes().map_err(|e| e.to_string())?)?,
            PgValueFormat::Text => value.as_str().map_err(|e| e.to_string())?.to_owned(),
        }),
        Decoder::Date => Value::from(decode::<NaiveDate>(value)?.format("%Y-%m-%d").to_string()),
        Decoder::Timestamp => Value::from(iterable_date(decode::<NaiveDateTime>(value)?.and_utc())),
        Decoder::TimestampTz => Value::from(iterable_date(decode::<DateTime<Utc>>(value)?)),
        Decoder::Json => decode::<Json<Value>>(value)?.0,
    })
}

/// Iterable's date format; sub-second digits are dropped because Iterable does not accept them.
fn iterable_date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S +00:00").to_string()
}

/// A decimal becomes a JSON number only when nothing is lost: an integer that fits `i64`, or a value
/// whose shortest `f64` form prints as the same decimal. Everything else (more digits than `f64`
/// holds, `NaN`, `Infinity`) stays the exact string PostgreSQL would print.
fn numeric_value(text: &str) -> Value {
    let normalized = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { text };
    if let Ok(integer) = normalized.parse::<i64>() {
        return Value::from(integer);
    }
    match normalized.parse::<f64>() {
        Ok(float) if float.is_finite() && float.to_string() == normalized => Value::from(float),
        _ => Value::from(text),
    }
}

/// The text form of PostgreSQL's binary `numeric`: a sign, a scale and base-10000 digits
/// (`src/backend/utils/adt/numeric.c`, `numeric_send`).
fn numeric_text(bytes: &[u8]) -> Result<String, String> {
    let word = |at: usize| -> Result<u16, String> {
        bytes
            .get(at..at + 2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .ok_or_else(|| "truncated numeric value".to_owned())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    let digits = (0..ndigits).map(|i| word(8 + 2 * i)).collect::<Result<Vec<u16>, _>>()?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        other => return Err(format!("unknown numeric sign {other:#06x}")),
    }
    // The base-10000 digit for 10000^power.
    let digit_at = |power: i64| -> u16 {
        usize::try_from(weight - power).ok().and_then(|index| digits.get(index).copied()).unwrap_or(0)
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit_at(weight).to_string());
        for power in (0..weight).rev() {
            text.push_str(&format!("{:04}", digit_at(power)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::with_capacity(dscale + 4);
        let mut power = -1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit_at(power)));
            power -= 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

fn uuid_text(bytes: &[u8]) -> Result<String, String> {
    if bytes.len() != 16 {
        return Err(format!("a uuid has 16 bytes, this one {}", bytes.len()));
    }
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{read, SourceSpec};
    use super::*;
    use crate::source::Reach;
    use serde_json::json;

    #[test]
    fn over_http_only_network_hosts_and_parameters_naming_no_file_pass_in_every_spelling_the_driver_reads() {
        for refused in [
            "postgres://u@db/crm?ssl-root-cert=/k",
            "postgres://u@db/crm?ssl-ca=/k",
            "postgres://u@db/crm?ssl-cert=/k",
            "postgres://u@db/crm?ssl-key=/k",
            "postgres://u@db/crm?sslrootcert=/k",
            "postgres://u@db/crm?sslcert=/k",
            "postgres://u@db/crm?sslkey=/k",
            "postgres://u@db/crm?ssl%2Dkey=/k",
            "postgres://u@db/crm?SSLKEY=/k",
            "postgres://u@db/crm?passfile=/k",
            "postgres://u@db/crm?host=/var/run/postgresql",
            "postgres://u@db/crm?host=db2",
            "postgres://u@db/crm?hostaddr=10.0.0.1",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/crm",
            "postgres://u@%2fvar%2frun/crm",
            "postgres:///crm",
        ] {
            let why = network_only(refused).err().unwrap_or_else(|| panic!("{refused} passed")).0;
            assert!(why.contains("over the HTTP API") && why.contains("CLI"), "{refused}: {why}");
        }
        for fine in [
            "postgres://u@db.internal:5433/crm",
            "postgresql://u@10.0.0.7/crm?sslmode=verify-full&application_name=x",
            "postgres://u@[::1]/crm?ssl-mode=require&options=-c%20search_path%3Dcrm&options[geqo]=off",
            "postgres://u@localhost/crm?statement-cache-capacity=0&dbname=crm&user=u&port=5432",
        ] {
            assert!(network_only(fine).is_ok(), "{fine}: {:?}", network_only(fine).err());
        }
    }

    /// The test server's URL. These tests are `#[ignore]`d, so they run only when asked for; asked for without a
    /// server, they fail saying so instead of passing unseen.
    fn test_url() -> String {
        match std::env::var("TEST_POSTGRES_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => panic!(
                "TEST_POSTGRES_URL is not set; set it to a PostgreSQL URL (e.g. postgres://postgres@127.0.0.1:5432/test) \
                 to run the PostgreSQL tests"
            ),
        }
    }

    fn spec(url: &str) -> SourceSpec {
        url.parse().unwrap()
    }

    /// A table name no other test (or test run) uses.
    fn unique_table(tag: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        format!("source_test_{tag}_{}_{nanos}", std::process::id())
    }

    async fn admin(url: &str) -> PgConnection {
        PgConnection::connect(url).await.unwrap()
    }

    /// `url` with a password added (trust auth ignores it), to check it never shows.
    fn with_password(url: &str, password: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (user_info, host) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
        let user = user_info.split(':').next().unwrap();
        format!("{scheme}://{user}:{password}@{host}")
    }

    #[test]
    fn the_password_kept_apart_goes_to_the_driver() {
        let options = connect_options("postgres://app@db:5432/crm", Some(&SecretString::from("pw/1@".to_string())));
        let url = options.unwrap().to_url_lossy();
        assert_eq!(url.password().map(super::super::percent_decode).as_deref(), Some("pw/1@"));
        assert_eq!(url.username(), "app");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn every_row_is_read_with_each_supported_type_mapped() {
        let url = test_url();
        let table = unique_table("types");
        let mut conn = admin(&url).await;
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (
                 id int4, flag bool, small int2, big int8, ratio float4, exact float8,
                 price numeric(12,2), email varchar(80), code char(3), label text, key uuid,
                 born date, seen timestamp, paid timestamptz, attrs jsonb, raw json);
             INSERT INTO {table} VALUES
                 (1, true, 7, 9007199254740993, 0.1, 2.5, 1234.50, 'ada@example.com', 'ab', 'vip',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1990-02-03', '2024-05-06 07:08:09.75',
                  '2024-05-06 07:08:09+02', '{{\"tier\": \"gold\", \"tags\": [1, 2]}}', '[true]'),
                 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, NULL, NULL, NULL, NULL);"
        ))
        .execute(&mut conn)
        .await
        .unwrap();

        let outcome = async {
            let stream =
                read(&spec(&url), Some(&format!("SELECT * FROM {table} ORDER BY id")), Columns::All, &Reach::Anywhere)
                    .await?;
            let columns = stream.columns.clone();
            Ok::<_, SourceError>((columns, collect(stream).await?))
        }
        .await;
        sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut conn).await.unwrap();
        let (columns, rows) = outcome.unwrap();

        assert_eq!(columns[..4], ["id", "flag", "small", "big"]);
        assert_eq!(
            rows[0],
            vec![
                json!(1),
                json!(true),
                json!(7),
                json!(9007199254740993_i64),
                json!(0.1),
                json!(2.5),
                json!(1234.5),
                json!("ada@example.com"),
                json!("ab "),
                json!("vip"),
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                json!("1990-02-03"),
                json!("2024-05-06 07:08:09 +00:00"),
                json!("2024-05-06 05:08:09 +00:00"),
                json!({"tier": "gold", "tags": [1, 2]}),
                json!([true]),
            ]
        );
        assert_eq!(rows[1][0], json!(2));
        assert!(rows[1][1..].iter().all(Value::is_null), "{:?}", rows[1]);
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn numeric_values_become_numbers_only_when_no_digit_is_lost() {
        let url = test_url();
        let sql = "SELECT n, n::text AS exact FROM (VALUES
                       (0::numeric), (-0.5), (1e-20), (12345678.90123), (100.000), (-99999.0001),
                       (10000), (123456789012345678901234567890.5), (0.1), ('NaN'), ('Infinity'),
                       (9223372036854775809)) AS t(n)";
        let stream = read(&spec(&url), Some(sql), Columns::All, &Reach::Anywhere).await.unwrap();
        let rows = collect(stream).await.unwrap();
        assert_eq!(rows.len(), 12);
        for row in &rows {
            let exact = row[1].as_str().unwrap();
            match &row[0] {
                Value::Number(number) => assert_eq!(number.as_f64().unwrap(), exact.parse::<f64>().unwrap(), "{exact}"),
                Value::String(text) => assert_eq!(text, exact),
                other => panic!("unexpected {other:?} for {exact}"),
            }
        }
        assert_eq!(rows[0][0], json!(0));
        assert_eq!(rows[1][0], json!(-0.5));
        assert_eq!(rows[4][0], json!(100));
        assert_eq!(rows[6][0], json!(10000));
        assert_eq!(rows[7][0], json!("123456789012345678901234567890.5"));
        assert_eq!(rows[9][0], json!("NaN"));
        assert_eq!(rows[11][0], json!("9223372036854775809"));
    }

    #[test]
    fn binary_numerics_print_like_postgres_does() {
        // 1234.50: ndigits 2, weight 0, positive, dscale 2, digits [1234, 5000]
        let bytes = [0, 2, 0, 0, 0, 0, 0, 2, 0x04, 0xD2, 0x13, 0x88];
        assert_eq!(numeric_text(&bytes).unwrap(), "1234.50");
        // -0.000012: ndigits 1, weight -2, negative, dscale 6, digits [1200]
        let bytes = [0, 1, 0xFF, 0xFE, 0x40, 0, 0, 6, 0x04, 0xB0];
        assert_eq!(numeric_text(&bytes).unwrap(), "-0.000012");
        // 20000: ndigits 1, weight 1, digits [2]
        let bytes = [0, 1, 0, 1, 0, 0, 0, 0, 0, 2];
        assert_eq!(numeric_text(&bytes).unwrap(), "20000");
        assert!(numeric_text(&[0, 1]).is_err());
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn enums_domains_and_citext_like_names_read_as_their_text() {
        let url = test_url();
        let tier = unique_table("tier");
        let score = unique_table("score");
        let mut conn = admin(&url).await;
        sqlx::raw_sql(&format!("CREATE TYPE {tier} AS ENUM ('gold', 'silver'); CREATE DOMAIN {score} AS int4;"))
            .execute(&mut conn)
            .await
            .unwrap();
        let sql = format!("SELECT 'gold'::{tier} AS tier, 5::{score} AS score, 'x'::name AS n");
        let outcome =
            async { collect(read(&spec(&url), Some(&sql), Columns::All, &Reach::Anywhere).await?).await }.await;
        sqlx::raw_sql(&format!("DROP TYPE {tier}; DROP DOMAIN {score};")).execute(&mut conn).await.unwrap();
        assert_eq!(outcome.unwrap(), vec![vec![json!("gold"), json!(5), json!("x")]]);
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn only_columns_come_back_in_the_requested_order() {
        let url = test_url();
        let sql = "SELECT 1 AS id, 'ada@example.com' AS email, 'Ada' AS name";
        let stream = read(&spec(&url), Some(sql), only(&["name", "id"]), &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["name", "id"]);
        assert_eq!(collect(stream).await.unwrap(), vec![vec![json!("Ada"), json!(1)]]);
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn a_missing_column_is_reported_even_when_the_query_returns_no_rows() {
        let url = test_url();
        let sql = "SELECT 1 AS id, 'x' AS email WHERE false";
        let error = read(&spec(&url), Some(sql), only(&["email", "phone"]), &Reach::Anywhere).await.unwrap_err();
        match error {
            SourceError::MissingColumn { column, available } => {
                assert_eq!(column, "phone");
                assert_eq!(available, vec!["id", "email"]);
            }
            other => panic!("expected MissingColumn, got {other:?}"),
        }
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn an_unsupported_type_is_refused_before_any_row_with_a_cast_hint() {
        let url = test_url();
        let sql = "SELECT 'a@b.c' AS email, '\\x00ff'::bytea AS photo";
        let error = read(&spec(&url), Some(sql), Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(
            matches!(&error, SourceError::UnsupportedType { column, type_name, .. }
                if column == "photo" && type_name == "bytea"),
            "{error:?}"
        );
        assert!(error.to_string().contains("photo::text"), "{error}");
        let fine = read(&spec(&url), Some(sql), only(&["email"]), &Reach::Anywhere).await;
        assert!(fine.is_ok(), "a column that is not selected does not matter");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn bad_sql_is_a_query_error_without_the_password() {
        let url = test_url();
        let url = with_password(&url, "s3cr3t-pw");
        let error = read(&spec(&url), Some("SELEC 1"), Columns::All, &Reach::Anywhere).await.unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(matches!(error, SourceError::Query { .. }), "{error:?}");
        assert!(shown.contains("syntax error"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn a_failure_mid_stream_is_a_query_error_after_the_good_rows() {
        let url = test_url();
        let sql = "SELECT 10 / (2500 - g) AS n FROM generate_series(1, 3000) AS g";
        let stream = read(&spec(&url), Some(sql), Columns::All, &Reach::Anywhere).await.unwrap();
        let mut batches = stream.batches;
        let mut good = 0;
        let error = loop {
            match batches.next().await.expect("the stream ends with an error") {
                Ok(batch) => good += batch.len(),
                Err(error) => break error,
            }
        };
        assert!(good >= 2000, "whole batches before the failure arrive: {good}");
        assert!(error.to_string().contains("division by zero"), "{error}");
        assert!(batches.next().await.is_none(), "nothing follows an error");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn a_write_is_refused_because_the_session_is_read_only() {
        let url = test_url();
        let table = unique_table("readonly");
        let mut conn = admin(&url).await;
        sqlx::raw_sql(&format!("CREATE TABLE {table} (id int4); INSERT INTO {table} VALUES (1);"))
            .execute(&mut conn)
            .await
            .unwrap();
        let sql = format!("DELETE FROM {table} RETURNING id");
        let outcome = match read(&spec(&url), Some(&sql), Columns::All, &Reach::Anywhere).await {
            Ok(stream) => collect(stream).await.map(|_| ()),
            Err(error) => Err(error),
        };
        let (left,): (i64,) =
            sqlx::query_as(&format!("SELECT count(*) FROM {table}")).fetch_one(&mut conn).await.unwrap();
        sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut conn).await.unwrap();
        let error = outcome.unwrap_err();
        assert!(error.to_string().contains("read-only"), "{error}");
        assert_eq!(left, 1);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_open_error_without_the_password() {
        // Needs no server: nothing listens on port 1.
        let url = "postgres://app:s3cr3t-pw@127.0.0.1:1/crm";
        let error = read(&spec(url), Some("SELECT 1"), Columns::All, &Reach::Anywhere).await.unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(matches!(error, SourceError::Open { .. }), "{error:?}");
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn a_missing_database_is_an_open_error_without_the_password() {
        let url = test_url();
        let url = with_password(&url, "s3cr3t-pw");
        let (base, _) = url.rsplit_once('/').unwrap();
        let url = format!("{base}/no_such_database_here");
        let error = read(&spec(&url), Some("SELECT 1"), Columns::All, &Reach::Anywhere).await.unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("no_such_database_here"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn many_rows_stream_in_batches_of_a_thousand() {
        let url = test_url();
        let sql = "SELECT g AS id, 'user' || g || '@example.com' AS email FROM generate_series(1, 25500) g";
        let stream = read(&spec(&url), Some(sql), only(&["email"]), &Reach::Anywhere).await.unwrap();
        let mut batches = stream.batches;
        let mut sizes = Vec::new();
        let mut last = None;
        while let Some(batch) = batches.next().await {
            let batch = batch.unwrap();
            sizes.push(batch.len());
            last = batch.last().cloned();
        }
        assert_eq!(sizes.iter().sum::<usize>(), 25500);
        assert!(sizes[..25].iter().all(|&size| size == 1000), "{sizes:?}");
        assert_eq!(last, Some(vec![json!("user25500@example.com")]));
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn dropping_the_stream_ends_the_query_on_the_server() {
        let url = test_url();
        let marker = unique_table("marker");
        // In the select list, generate_series streams; in FROM it would first build all its rows.
        let sql = format!("SELECT generate_series(1, 200000000) AS n /* {marker} */");
        let mut stream = read(&spec(&url), Some(&sql), Columns::All, &Reach::Anywhere).await.unwrap();
        assert!(stream.batches.next().await.unwrap().is_ok());
        let mut conn = admin(&url).await;
        async fn running(conn: &mut PgConnection, marker: &str) -> i64 {
            let probe = format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND query LIKE '%{marker}%'"
            );
            let (count,): (i64,) = sqlx::query_as(&probe).fetch_one(conn).await.unwrap();
            count
        }
        assert_eq!(running(&mut conn, &marker).await, 1, "the query runs while the stream is read");
        drop(stream);
        let mut gone = false;
        for _ in 0..100 {
            if running(&mut conn, &marker).await == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(gone, "the server is still running the dropped query");
    }
}
