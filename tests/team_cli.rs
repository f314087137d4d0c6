//! Accounts, tokens, passwords and the audit trail from the CLI, which acts as the local administrator.

mod common;

use common::*;

/// The binary run as the OS user `tess`.
fn as_tess(env: &Env, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut c = env.cmd();
    c.env("USER", "tess").args(args);
    if let Some(s) = stdin {
        c.write_stdin(s);
    }
    c.output().unwrap()
}

fn ok_as_tess(env: &Env, args: &[&str], stdin: Option<&str>) -> String {
    let out = as_tess(env, args, stdin);
    assert!(out.status.success(), "`{}` failed: {}{}", args.join(" "), text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_user_gets_a_token_shown_once_and_stored_only_as_a_hash_and_rotation_replaces_it() {
    let env = Env::new();
    let added = env.json(&["user", "add", "ann", "--role", "admin"]);
    let token = added["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("se_") && token.len() >= 3 + 2 + 43, "{token}");
    assert_eq!(added["user"]["role"], "admin");

    let listed = text(&env.ok(&["--json", "user", "list"]).stdout);
    let shown = text(&env.ok(&["user", "show", "ann"]).stdout);
    let secret = token.splitn(3, '_').nth(2).unwrap();
    for out in [&listed, &shown] {
        assert!(!out.contains(secret), "the token is shown once only: {out}");
    }
    let db = std::fs::read(env.path("store.db")).unwrap();
    let wal = std::fs::read(env.path("store.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the store holds no token in clear");
    }

    let rotated = env.json(&["user", "token", "ann", "--rotate"]);
    let new_token = rotated["token"].as_str().unwrap();
    assert_ne!(new_token, token);
    let refused = env.run(&["user", "token", "ann"]);
    assert!(!refused.status.success(), "rotation must be asked for with --rotate");
    let missing = env.run(&["user", "token", "nobody", "--rotate"]);
    assert!(text(&missing.stderr).contains("user 'nobody' does not exist"), "{}", text(&missing.stderr));
}

#[test]
fn roles_change_accounts_are_removed_and_bad_names_are_refused_with_the_rule() {
    let env = Env::new();
    env.ok(&["user", "add", "carl", "--role", "contributor"]);
    let out = text(&env.ok(&["user", "role", "carl", "admin"]).stdout);
    assert!(out.contains("now admin (was contributor)"), "{out}");
    assert_eq!(env.json(&["user", "show", "carl"])["role"], "admin");
    let twice = env.run(&["user", "add", "carl", "--role", "admin"]);
    assert!(text(&twice.stderr).contains("user 'carl' already exists"), "{}", text(&twice.stderr));
    let bad = env.run(&["user", "add", "local:root", "--role", "admin"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("holds ':'"), "{}", text(&bad.stderr));
    env.ok(&["user", "remove", "carl"]);
    assert_eq!(env.json(&["user", "list"]), serde_json::json!([]));
}

#[test]
fn a_password_is_read_from_stdin_checked_for_length_and_never_printed() {
    let env = Env::new();
    env.ok(&["user", "add", "ann", "--role", "admin"]);
    let short = as_tess(&env, &["user", "password", "ann", "--password-stdin"], Some("short\n"));
    assert!(!short.status.success());
    assert!(text(&short.stderr).contains("at least 12"), "{}", text(&short.stderr));
    assert_eq!(env.json(&["user", "show", "ann"])["has_password"], false);

    let out = ok_as_tess(&env, &["user", "password", "ann", "--password-stdin"], Some("a long enough secret\n"));
    assert!(!out.contains("a long enough secret"));
    assert_eq!(env.json(&["user", "show", "ann"])["has_password"], true);
    let audit = text(&env.ok(&["--json", "audit"]).stdout);
    assert!(!audit.contains("a long enough secret"), "{audit}");
    let no_tty = env.run(&["user", "password", "ann"]);
    assert!(text(&no_tty.stderr).contains("--password-stdin"), "{}", text(&no_tty.stderr));
}

#[test]
fn every_change_from_the_cli_is_audited_as_the_local_operator_and_consent_names_them() {
    let env = Env::new();
    let csv = env.write_csv("people.csv", &[("a@example.com", "gold")]);
    let base = ["connection", "add", "iterable", "--api-key-env", "ITERABLE_KEY", "--base-url", &env.base_url];
    ok_as_tess(&env, &[&base[..], &["--accept-data-privacy"]].concat(), None);
    let source = format!("csv:{}", csv.display());
    ok_as_tess(&env, &["segment", "add", "vip", "--source", &source], None);
    ok_as_tess(
        &env,
        &["export", "add", "exp", "--connection", "iterable", "--segment", "vip", "--email-field", "email"],
        None,
    );
    ok_as_tess(&env, &["export", "run", "exp"], None);
    // Refused, so not recorded: the audit holds what was done.
    for refused in
        [&["export", "run", "nope"][..], &["export", "run", "nope", "--dry-run"], &["export", "trigger", "nope"]]
    {
        let out = as_tess(&env, refused, None);
        assert_eq!(out.status.code(), Some(1), "{refused:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("'nope'"), "{}", text(&out.stderr));
    }
    ok_as_tess(&env, &["user", "add", "ann", "--role", "contributor"], None);
    ok_as_tess(&env, &["user", "role", "ann", "admin"], None);
    ok_as_tess(&env, &["export", "remove", "exp"], None);
    ok_as_tess(&env, &["segment", "remove", "vip"], None);
    ok_as_tess(&env, &["connection", "remove", "iterable"], None);

    let conn_consent = env.json(&["audit", "--user", "local:tess", "--limit", "100"]);
    let rows = conn_consent.as_array().unwrap();
    let actions: Vec<(&str, &str)> =
        rows.iter().rev().map(|r| (r["action"].as_str().unwrap(), r["target"].as_str().unwrap())).collect();
    assert_eq!(
        actions,
        vec![
            ("connection.add", "iterable"),
            ("segment.add", "vip"),
            ("export.add", "exp"),
            ("export.run", "exp"),
            ("user.add", "ann"),
            ("user.role", "ann"),
            ("export.remove", "exp"),
            ("segment.remove", "vip"),
            ("connection.remove", "iterable"),
        ]
    );
    assert!(rows.iter().all(|r| r["actor"] == "local:tess" && r["origin"] == "cli"), "{rows:#?}");
    assert!(!conn_consent.to_string().contains(KEY), "no key in the audit");
    assert_eq!(env.json(&["audit", "--user", "someone-else"]), serde_json::json!([]));
    assert_eq!(env.json(&["audit", "--limit", "2"]).as_array().unwrap().len(), 2);
}

#[test]
fn a_connections_consent_is_recorded_as_the_local_operator() {
    let env = Env::new();
    let base = ["connection", "add", "iterable", "--api-key-env", "ITERABLE_KEY", "--base-url", &env.base_url];
    ok_as_tess(&env, &[&base[..], &["--accept-data-privacy"]].concat(), None);
    assert_eq!(env.json(&["connection", "show", "iterable"])["privacy_accepted_by"], "local:tess");
    let mut c = env.cmd();
    let other = ["connection", "add", "other", "--api-key-env", "ITERABLE_KEY", "--base-url", &env.base_url];
    let out = c.env_remove("USER").env_remove("LOGNAME").args(other).arg("--accept-data-privacy").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // As in a container (`docker exec`), where neither is set: the system's name for the user running it.
    let me = std::process::Command::new("id").arg("-un").output().unwrap();
    let me = String::from_utf8(me.stdout).unwrap().trim().to_string();
    assert!(!me.is_empty());
    assert_eq!(env.json(&["connection", "show", "other"])["privacy_accepted_by"], format!("local:{me}"));
}

#[test]
fn connection_edit_opens_a_connection_to_contributors_and_replaces_its_key_only_once_iterable_accepts_it() {
    let env = Env::with_sandbox(segment_exporter::sandbox::SandboxOptions {
        api_keys: vec![KEY.into(), "second-key-5555".into()],
        ..opts()
    });
    env.add_connection();
    let v = env.json(&["connection", "edit", "iterable", "--usable-by", "contributors"]);
    assert_eq!(v["usable_by"], "contributors");
    let refused = as_tess(&env, &["connection", "edit", "iterable", "--api-key-stdin"], Some("wrong-key-0000\n"));
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("was not changed"), "{}", text(&refused.stderr));
    assert!(!text(&refused.stderr).contains("wrong-key-0000"), "{}", text(&refused.stderr));
    let shown = ok_as_tess(&env, &["connection", "edit", "iterable", "--api-key-stdin"], Some("second-key-5555\n"));
    assert!(shown.contains("Changed connection 'iterable'"), "{shown}");
    let v = env.json(&["connection", "show", "iterable"]);
    assert!(v["api_key"].as_str().unwrap().ends_with("(ends in …5555)"), "{v}");
    let nothing = env.run(&["connection", "edit", "iterable"]);
    assert!(text(&nothing.stderr).contains("nothing to change"), "{}", text(&nothing.stderr));

    env.ok(&["connection", "export-user", "iterable", "--remove"]);
    let v = env.json(&["connection", "show", "iterable"]);
    assert!(v["export_user_problem"].as_str().unwrap().contains("has no export user"), "{v}");
    let audit = env.json(&["audit", "--limit", "3"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["connection.export_user.remove", "connection.edit", "connection.edit"]);
}
