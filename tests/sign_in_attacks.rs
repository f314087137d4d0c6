//! Attacks on authentication through the real daemon binary over loopback, each client on its own loopback address
//! (127.0.0.N): forged tokens and wrong passwords from one client must never keep another client out, a guesser
//! spread over many clients is held to the account's pace, concurrent guesses get no more password checks than the
//! same guesses in sequence, and a sign-in flood from eight addresses stays within memory, keeps token requests
//! answering and writes at most one audit row a minute per (name, client).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// A daemon on 127.0.0.1, and the accounts ann (admin) and bob (contributor), both with `PASSWORD`; ann's token.
fn team() -> (Env, Daemon, String) {
    let daemon = "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\n\
                  refresh_schedule = \"0 0 0 1 1 *\"\n";
    let env = Env::with_config(opts(), daemon);
    let ann = env.json(&["user", "add", "ann", "--role", "admin"])["token"].as_str().unwrap().to_string();
    env.json(&["user", "add", "bob", "--role", "contributor"]);
    for name in ["ann", "bob"] {
        env.cmd()
            .args(["user", "password", name, "--password-stdin"])
            .write_stdin(format!("{PASSWORD}\n"))
            .assert()
            .success();
    }
    let daemon = Daemon::start(&env);
    (env, daemon, ann)
}

/// A runtime with a few workers, for clients that send at once.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

/// An HTTP client whose connections come from 127.0.0.`n`.
fn from(n: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::from([127, 0, 0, n])).build().unwrap()
}

/// A sign-in's status and its `Retry-After` (seconds), if any.
async fn sign_in(client: &reqwest::Client, root: &str, user: &str, password: &str) -> (u16, Option<u64>) {
    let r = client
        .post(format!("{root}/api/v1/session"))
        .json(&json!({ "user": user, "password": password }))
        .send()
        .await
        .unwrap();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (r.status().as_u16(), retry_after)
}

async fn me(client: &reqwest::Client, root: &str, token: &str) -> u16 {
    client.get(format!("{root}/api/v1/me")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// Sends wrong passwords for `user` from `client` until the first 429; how many were checked (401) before it.
async fn guess_until_refused(client: &reqwest::Client, root: &str, user: &str) -> usize {
    let mut checked = 0;
    loop {
        match sign_in(client, root, user, &format!("wrong guess {checked}")).await {
            (401, _) => checked += 1,
            (429, retry_after) => {
                assert!(retry_after.is_some_and(|s| s >= 1), "a 429 says when to come back");
                return checked;
            }
            (other, _) => panic!("a wrong password answered {other}"),
        }
        assert!(checked <= 200, "never refused after {checked} wrong passwords");
    }
}

/// The failed sign-ins of the audit, as the CLI reads them.
fn failed_sign_ins(env: &Env) -> Vec<Value> {
    let rows = env.json(&["audit", "--limit", "5000"]);
    rows.as_array().unwrap().iter().filter(|r| r["action"] == "session.sign_in.failed").cloned().collect()
}

#[test]
fn wrong_tokens_from_one_client_never_keep_another_client_out_with_the_right_token_or_password() {
    let (_env, daemon, ann) = team();
    let root = daemon.status.clone();
    let ann_id = ann.split('_').nth(1).unwrap().to_string();
    runtime().block_on(async {
        // Forged tokens naming ann's account, from 127.0.0.2, until that client is refused.
        let attacker = from(2);
        let mut forged = 0;
        while me(&attacker, &root, &format!("se_{ann_id}_forged{forged:040}")).await != 429 {
            forged += 1;
            assert!(forged <= 200, "wrong tokens are never throttled");
        }
        assert_eq!(me(&attacker, &root, &ann).await, 429, "the guessing client itself waits, right token or not");
        // Ann, from 127.0.0.1, is not affected in any way.
        let victim = from(1);
        assert_eq!(me(&victim, &root, &ann).await, 200, "after {forged} forged tokens from another client");
        assert_eq!(sign_in(&victim, &root, "ann", PASSWORD).await.0, 200, "the right password from another client");
        // Nor by forged tokens that keep coming while she works.
        for i in 0..40 {
            let _ = me(&attacker, &root, &format!("se_{ann_id}_again{i:040}")).await;
            assert_eq!(me(&victim, &root, &ann).await, 200, "round {i}");
        }
    });
}

#[test]
fn wrong_passwords_from_one_client_never_keep_another_client_out_with_the_right_password() {
    let (_env, daemon, ann) = team();
    let root = daemon.status.clone();
    runtime().block_on(async {
        let attacker = from(2);
        let checked = guess_until_refused(&attacker, &root, "ann").await;
        assert!(checked >= 10, "refused after only {checked} wrong passwords");
        assert_eq!(sign_in(&attacker, &root, "ann", PASSWORD).await.0, 429, "the guessing client waits");
        let victim = from(1);
        assert_eq!(sign_in(&victim, &root, "ann", PASSWORD).await.0, 200, "ann, from a client that has not failed");
        assert_eq!(me(&victim, &root, &ann).await, 200);
        assert_eq!(sign_in(&from(3), &root, "bob", PASSWORD).await.0, 200, "another account from a third client");
    });
}

#[test]
fn a_guesser_spread_over_many_clients_is_held_to_the_accounts_pace_and_the_right_password_still_signs_in() {
    let (_env, daemon, _) = team();
    let root = daemon.status.clone();
    let clients: Vec<u8> = (10..34).collect();
    runtime().block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let guessers: Vec<_> = clients
            .iter()
            .map(|&n| {
                let (root, stop) = (root.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = from(n);
                    let mut checked = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        match sign_in(&client, &root, "ann", &format!("guess {n} {checked}")).await {
                            (401, _) => checked += 1,
                            (429, _) => tokio::time::sleep(Duration::from_millis(100)).await,
                            (other, _) => panic!("a guess answered {other}"),
                        }
                    }
                    checked
                })
            })
            .collect();
        // Once the guessers are at it, ann signs in from a client that has not failed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let asked = Instant::now();
        let (status, _) = sign_in(&from(1), &root, "ann", PASSWORD).await;
        let waited = asked.elapsed();
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        let mut checked = 0;
        for g in guessers {
            checked += g.await.unwrap();
        }
        let elapsed = started.elapsed();
        eprintln!(
            "{checked} passwords checked for ann from {} clients in {elapsed:?}; ann waited {waited:?}",
            clients.len()
        );
        assert_eq!(status, 200, "the right password from a client that has not failed is never turned away");
        // Each client's first guess is checked at once (it had not failed); after that the account's pace holds:
        // 20 at once, then one every 3 s, however many clients guess.
        let allowance = clients.len() + 20 + elapsed.as_secs() as usize / 3 + 1;
        assert!(checked <= allowance, "{checked} passwords checked for one account, more than {allowance}");
    });
}

#[test]
fn concurrent_guesses_get_no_more_password_checks_than_the_same_guesses_in_sequence() {
    let (_env, daemon, _) = team();
    let root = daemon.status.clone();
    runtime().block_on(async {
        let attacker = from(2);
        let in_sequence = guess_until_refused(&attacker, &root, "ann").await;
        // One wave of 60 at once, the right password among them, from the client that is already refused.
        let started = Instant::now();
        let wave: Vec<_> = (0..60)
            .map(|i| {
                let (client, root) = (attacker.clone(), root.clone());
                let password = if i == 30 { PASSWORD.to_string() } else { format!("wave guess {i}") };
                tokio::spawn(async move { sign_in(&client, &root, "ann", &password).await })
            })
            .collect();
        let mut answers = BTreeMap::new();
        for w in wave {
            let (status, retry_after) = w.await.unwrap();
            *answers.entry(status).or_insert(0usize) += 1;
            if status == 429 {
                assert!(retry_after.is_some(), "every 429 says when to come back");
            }
        }
        let checked = answers.get(&401).unwrap_or(&0) + answers.get(&200).unwrap_or(&0);
        // One more check is due every 3 s since the refusal.
        let allowance = 1 + started.elapsed().as_secs() as usize / 3;
        assert!(checked <= allowance, "after {in_sequence} in sequence, the wave got {answers:?}");

        // Sustained: 16 at a time from another client, against another account, for 6 s.
        let attacker = from(3);
        let started = Instant::now();
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let (client, root) = (attacker.clone(), root.clone());
                tokio::spawn(async move {
                    let mut checked = 0usize;
                    let mut i = 0;
                    while started.elapsed() < Duration::from_secs(6) {
                        i += 1;
                        match sign_in(&client, &root, "bob", &format!("sustained {w} {i}")).await.0 {
                            401 => checked += 1,
                            429 => tokio::time::sleep(Duration::from_millis(20)).await,
                            other => panic!("a guess answered {other}"),
                        }
                    }
                    checked
                })
            })
            .collect();
        let mut checked = 0;
        for w in workers {
            checked += w.await.unwrap();
        }
        let allowance = in_sequence + started.elapsed().as_secs() as usize / 3 + 1;
        assert!(
            checked <= allowance,
            "16 at a time got {checked} checks in 6 s; in sequence {in_sequence} then 1 per 3 s"
        );
    });
}

/// The daemon's resident memory: now, and its peak since it started (MiB).
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_sign_in_flood_from_eight_addresses_stays_under_400_mb_keeps_tokens_answering_and_is_audited_once_a_minute() {
    let (env, daemon, ann) = team();
    let root = daemon.status.clone();
    let pid = daemon.child.id();
    let (before, _) = rss_mib(pid);
    let names = ["ann", "bob", "nobody-1", "nobody-2"];
    let outcome = runtime().block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let mut floods = Vec::new();
        for address in 2..10u8 {
            let client = from(address);
            for worker in 0..24 {
                let (client, root, stop) = (client.clone(), root.clone(), stop.clone());
                floods.push(tokio::spawn(async move {
                    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
                    let mut unpaced = 0;
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let name = names[(worker + i) % names.len()];
                        let (status, retry_after) = sign_in(&client, &root, name, &format!("flood {i}")).await;
                        *answers.entry(status).or_insert(0) += 1;
                        if status == 429 && retry_after.is_none() {
                            unpaced += 1;
                        }
                    }
                    (answers, unpaced)
                }));
            }
        }
        // Meanwhile: ann's token from 127.0.0.1, timed, and the memory.
        let started = Instant::now();
        let victim = from(1);
        let mut slowest_token = Duration::ZERO;
        let mut peak_sampled = 0;
        let mut signed_in = None;
        while started.elapsed() < Duration::from_secs(6) {
            let asked = Instant::now();
            assert_eq!(me(&victim, &root, &ann).await, 200, "a token request during the flood");
            slowest_token = slowest_token.max(asked.elapsed());
            peak_sampled = peak_sampled.max(rss_mib(pid).0);
            if signed_in.is_none() && started.elapsed() > Duration::from_secs(2) {
                let asked = Instant::now();
                signed_in = Some((sign_in(&victim, &root, "ann", PASSWORD).await.0, asked.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
        let mut unpaced = 0;
        for f in floods {
            let (a, u) = f.await.unwrap();
            for (status, n) in a {
                *answers.entry(status).or_insert(0) += n;
            }
            unpaced += u;
        }
        (answers, unpaced, slowest_token, peak_sampled, signed_in.unwrap(), started.elapsed())
    });
    let (answers, unpaced, slowest_token, peak_sampled, (signed_in, sign_in_took), elapsed) = outcome;
    let (_, peak) = rss_mib(pid);
    eprintln!(
        "flood of {elapsed:?} from 8 addresses: {answers:?}; RSS {before} MiB before, {peak_sampled} MiB sampled at \
         most, {peak} MiB peak; slowest token request {slowest_token:?}; the right password took {sign_in_took:?}"
    );
    assert!(peak < 400, "the daemon's memory peaked at {peak} MiB during the flood");
    assert_eq!(signed_in, 200, "the right password from a client that has not failed is delayed, never refused");
    assert!(slowest_token < Duration::from_secs(5), "a token request waited {slowest_token:?} behind the flood");
    assert_eq!(unpaced, 0, "every 429 carries Retry-After");
    assert_eq!(answers.keys().copied().collect::<BTreeSet<u16>>(), BTreeSet::from([401, 429]), "{answers:?}");

    // One audit row a minute per (name, client), counting the failures it stands for.
    let rows = failed_sign_ins(&env);
    let minutes = elapsed.as_secs() / 60 + 2;
    let most = 8 * names.len() * minutes as usize;
    assert!(rows.len() <= most, "{} audit rows for {} failed sign-ins; at most {most}", rows.len(), answers[&401]);
    let counted: u64 = rows.iter().map(|r| r["count"].as_u64().expect("each row counts its failures")).sum();
    assert_eq!(counted as usize, answers[&401], "the rows count every failed sign-in");
    let pairs: BTreeSet<(String, String)> =
        rows.iter().map(|r| (r["actor"].to_string(), r["origin"].to_string())).collect();
    assert!(pairs.len() >= 8, "rows per client: {pairs:?}");
}
