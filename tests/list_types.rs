//! End-to-end: only a Standard (static) list is ever adopted. A Suppression, Dynamic or Internal list carrying a
//! segment's name is never filled: alone it fails the run before anything is sent, beside a Standard one it is
//! left alone with a warning.

mod common;

use common::*;
use serde_json::Value;

fn list_of_type(env: &Env, name: &str, list_type: &str) -> i64 {
    env.create_list_of_type(name, list_type)
}

#[test]
fn a_suppression_list_named_like_the_segment_is_refused_and_left_untouched() {
    let env = Env::new();
    let suppression = list_of_type(&env, "VIP", "Suppression");
    env.setup_csv_export("VIP", &emails(0, 20));
    env.sandbox.reset_stats();

    let out = env.run(&["--json", "export", "run", "exp"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "failed", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("Suppression") && error.contains(&format!("id {suppression}")) && error.contains("Rename"),
        "the error says which list and why: {error}"
    );
    assert_eq!(env.sandbox.list_members(suppression).unwrap(), Vec::<String>::new());
    let stats = env.stats();
    assert_eq!(requests(&stats, "lists.subscribe") + requests(&stats, "lists.create"), 0, "{stats:?}");
    assert_eq!(requests(&stats, "lists.getUsers"), 0, "not even read: {stats:?}");
    assert_eq!(env.sandbox_lists().len(), 1, "no list was created beside it");
}

#[test]
fn a_standard_list_beside_a_dynamic_namesake_is_used_with_a_warning() {
    let env = Env::new();
    let members = emails(0, 20);
    // The Dynamic list is the older one: without looking at types, it is the one that would be adopted.
    let dynamic = list_of_type(&env, "VIP", "Dynamic");
    let standard = list_of_type(&env, "VIP", "Standard");
    env.setup_csv_export("VIP", &members);

    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["list_id"], standard, "{report}");
    assert_eq!(env.sandbox.list_members(standard).unwrap(), sorted(members));
    assert_eq!(env.sandbox.list_members(dynamic).unwrap(), Vec::<String>::new());
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    assert!(warnings[0].as_str().unwrap().contains(&format!("Dynamic list of that name (id {dynamic})")), "{report}");
    let shown = env.json(&["runs", "show", &report["run_id"].to_string()]);
    assert_eq!(shown["warnings"], report["warnings"]);
}
