//! The master key that seals API keys given on stdin: a lost or wrong key is refused, never silently replaced.

mod common;

use common::*;

fn add_stdin_connection(env: &Env, name: &str) -> std::process::Output {
    env.cmd()
        .args(["connection", "add", name, "--api-key-stdin", "--base-url", &env.base_url, "--accept-data-privacy"])
        .write_stdin(format!("{KEY}\n"))
        .output()
        .unwrap()
}

#[test]
fn a_lost_master_key_is_not_replaced_and_nothing_is_stored() {
    let env = Env::new();
    let first = add_stdin_connection(&env, "vault");
    assert!(first.status.success(), "{}", text(&first.stderr));
    let key_file = env.path("store.db.key");
    let original = std::fs::read(&key_file).unwrap();
    std::fs::rename(&key_file, env.path("elsewhere.key")).unwrap();

    let out = add_stdin_connection(&env, "second");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("master key file") && err.contains("is missing"), "{err}");
    assert!(err.contains("vault"), "the message names the connections whose keys need it: {err}");
    assert!(!err.contains(KEY), "{err}");
    assert!(!key_file.exists(), "no new master key may be created beside sealed keys");
    let names: Vec<String> = env
        .json(&["connection", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["vault"], "nothing was stored");

    // Using the sealed key says what is missing too.
    let out = env.run(&["connection", "test", "vault"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is missing"), "{}", text(&out.stderr));

    // Restored from backup, everything works again, the first key included.
    std::fs::rename(env.path("elsewhere.key"), &key_file).unwrap();
    assert_eq!(std::fs::read(&key_file).unwrap(), original);
    env.ok(&["connection", "test", "vault"]);
    let out = add_stdin_connection(&env, "second");
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.ok(&["connection", "test", "second"]);
}

#[test]
fn a_wrong_master_key_says_so_and_stores_nothing() {
    let env = Env::new();
    assert!(add_stdin_connection(&env, "vault").status.success());
    let key_file = env.path("store.db.key");
    std::fs::write(&key_file, "ab".repeat(32)).unwrap();

    let out = add_stdin_connection(&env, "second");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("not the key the stored secrets were sealed with"), "{err}");
    assert_eq!(env.json(&["connection", "list"]).as_array().unwrap().len(), 1);

    let out = env.run(&["connection", "test", "vault"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot be decrypted with this master key"), "{}", text(&out.stderr));
}
