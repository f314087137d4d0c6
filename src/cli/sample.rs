//! `sample-data`: a seeded SQLite file of customer profiles, with a realistic sprinkle of invalid and duplicate
//! emails, for the demo and the benchmark.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};

use super::{exit, Ctx, Exit};

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// SQLite file to write, table `profiles`. An existing file is refused unless --force.
    pub path: PathBuf,
    /// Replace the file if it exists (all of it, whatever tables it holds).
    #[arg(long)]
    pub force: bool,
    /// Number of profile rows.
    #[arg(long, default_value_t = 1000)]
    pub profiles: u64,
    /// Random seed: the same seed gives the same rows.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of rows whose email is empty, NULL or malformed.
    #[arg(long, default_value_t = 0.01)]
    pub invalid_share: f64,
    /// Share of rows repeating an earlier row's email in another letter case.
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_share: f64,
    /// Share of the segment that changed since the file written without this flag (same seed and size): half of
    /// it are valid profiles that left (their rows are gone), half are new profiles that joined (extra rows with
    /// ids above --profiles). The benchmark uses it for its "1% changed" re-run.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
}

/// id, email, first name, country, tier, lifetime value, churn risk.
type ProfileRow = (u64, Option<String>, &'static str, &'static str, &'static str, f64, f64);

const COUNTRIES: &[&str] = &["US", "GB", "DE", "FR", "NL", "SE", "ES", "IT", "CA", "AU"];
const TIERS: &[(&str, f64)] = &[("gold", 0.1), ("silver", 0.3), ("bronze", 1.0)];
const NAMES: &[&str] = &["Ada", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena"];

/// The email of profile `i`; duplicates and case variants derive from it.
pub fn sample_email(i: u64) -> String {
    format!("customer{i}@example.com")
}

pub async fn run(ctx: &Ctx, a: SampleArgs) -> anyhow::Result<u8> {
    for (flag, v) in
        [("--invalid-share", a.invalid_share), ("--duplicate-share", a.duplicate_share), ("--churn", a.churn)]
    {
        if !(0.0..=0.5).contains(&v) {
            return Err(Exit::error(exit::USAGE, format!("{flag} {v} must be between 0 and 0.5")));
        }
    }
    // Another program's database may sit at that path: it is replaced only when asked.
    if std::fs::symlink_metadata(&a.path).is_ok() {
        if !a.force {
            return Err(Exit::with_kind(
                super::error::ErrorKind::Exists,
                format!(
                    "{} exists already; sample-data writes a whole new file, so it would be lost. Give another \
                     path, or add --force to replace it.",
                    a.path.display()
                ),
            ));
        }
        std::fs::remove_file(&a.path).map_err(|e| {
            Exit::error(exit::FAILED, format!("cannot replace {}: {e}. Give another path.", a.path.display()))
        })?;
    }
    let mut conn = SqliteConnectOptions::from_str("sqlite:")?
        .filename(&a.path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Off)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Off)
        .connect()
        .await?;
    sqlx::query(
        "CREATE TABLE profiles (id INTEGER PRIMARY KEY, email TEXT, first_name TEXT, country TEXT, tier TEXT, \
         lifetime_value REAL, churn_risk REAL)",
    )
    .execute(&mut conn)
    .await?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    // Leavers are drawn from their own stream, so every row that stays is the same as without --churn.
    let mut churn_rng = StdRng::seed_from_u64(a.seed ^ 0x5eed_c4a2);
    let (mut left, joined) = (0u64, (a.profiles as f64 * a.churn / 2.0).round() as u64);
    let mut tx = conn.begin().await?;
    let mut rows = Vec::with_capacity(5000);
    let flush = |rows: &mut Vec<ProfileRow>| {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO profiles (id, email, first_name, country, tier, lifetime_value, churn_risk) ",
        );
        q.push_values(rows.drain(..), |mut b, r| {
            b.push_bind(r.0 as i64)
                .push_bind(r.1)
                .push_bind(r.2)
                .push_bind(r.3)
                .push_bind(r.4)
                .push_bind(r.5)
                .push_bind(r.6);
        });
        q
    };
    for id in 1..=a.profiles {
        let roll: f64 = rng.gen();
        let email = if roll < a.invalid_share {
            match rng.gen_range(0..4) {
                0 => None,
                1 => Some(String::new()),
                2 => Some(format!("customer{id} at example.com")),
                _ => Some(format!("customer{id}@example")),
            }
        } else if roll < a.invalid_share + a.duplicate_share && id > 1 {
            let earlier = rng.gen_range(1..id);
            Some(format!("  {}", sample_email(earlier).to_uppercase()))
        } else {
            Some(sample_email(id))
        };
        let row = profile_row(&mut rng, id, email);
        let leaves = churn_rng.gen::<f64>() < a.churn / 2.0 && row.1.as_deref() == Some(sample_email(id).as_str());
        if leaves {
            left += 1;
        } else {
            rows.push(row);
        }
        if rows.len() == 4000 {
            flush(&mut rows).build().execute(&mut *tx).await?;
        }
    }
    for id in a.profiles + 1..=a.profiles + joined {
        rows.push(profile_row(&mut rng, id, Some(sample_email(id))));
        if rows.len() == 4000 {
            flush(&mut rows).build().execute(&mut *tx).await?;
        }
    }
    if !rows.is_empty() {
        flush(&mut rows).build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    conn.close().await?;
    let written = a.profiles - left + joined;
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({
            "path": a.path, "profiles": written, "seed": a.seed, "left": left, "joined": joined,
        }));
    } else if a.churn > 0.0 {
        println!(
            "Wrote {written} profiles to {} (table `profiles`, seed {}): {left} of the {} profiles left, {joined} joined.",
            a.path.display(),
            a.seed,
            a.profiles
        );
    } else {
        println!("Wrote {} profiles to {} (table `profiles`, seed {}).", a.profiles, a.path.display(), a.seed);
    }
    Ok(exit::OK)
}

/// The fields of profile `id` after its email, drawn from `rng` in a fixed order.
fn profile_row(rng: &mut StdRng, id: u64, email: Option<String>) -> ProfileRow {
    let t: f64 = rng.gen();
    let tier = TIERS.iter().find(|(_, p)| t < *p).map_or("bronze", |(n, _)| n);
    (
        id,
        email,
        NAMES[rng.gen_range(0..NAMES.len())],
        COUNTRIES[rng.gen_range(0..COUNTRIES.len())],
        tier,
        (rng.gen::<f64>() * 5000.0 * 100.0).round() / 100.0,
        (rng.gen::<f64>() * 100.0).round() / 100.0,
    )
}
