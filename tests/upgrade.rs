//! Upgrading in place: a store written before issue 7 (tests/fixtures/v1-store.db, made by
//! tests/fixtures/make-v1-store.sh) opens with today's binary with nothing lost, and its exports go on sending only
//! what changed, the legacy pair of exports that share one list included.

mod common;

use common::*;

/// The fixture's lists as they stand in Iterable: list 1000 `VIP` (vip0..19, tier gold) and 1001 `Churn`
/// (churn0..9, tier silver).
fn vip() -> Vec<String> {
    (0..20).map(|i| format!("vip{i}@example.com")).collect()
}

fn churn() -> Vec<String> {
    (0..10).map(|i| format!("churn{i}@example.com")).collect()
}

/// Copies the fixture into `env`, points its connection at this sandbox and its segments at fresh CSV files, and
/// recreates its Iterable lists in the sandbox as the fixture's runs left them.
fn install_fixture(env: &Env) {
    std::fs::copy("tests/fixtures/v1-store.db", env.path("store.db")).unwrap();
    let (vip, churn) = (vip(), churn());
    let vip_rows: Vec<(&str, &str)> = vip.iter().map(|e| (e.as_str(), "gold")).collect();
    let churn_rows: Vec<(&str, &str)> = churn.iter().map(|e| (e.as_str(), "silver")).collect();
    let vip_csv = env.write_csv("vip.csv", &vip_rows);
    let churn_csv = env.write_csv("churn.csv", &churn_rows);
    env.store_sql(&[&format!("UPDATE connections SET base_url = '{}'", env.base_url)]);
    for (name, path) in [("VIP", &vip_csv), ("Churn", &churn_csv)] {
        env.store_sql(&[&format!("UPDATE segments SET source = 'csv:{}' WHERE name = '{name}'", path.display())]);
    }
    for (name, members, tier) in [("VIP", vip, "gold"), ("Churn", churn, "silver")] {
        let id = env.create_list_by_hand(name);
        let subscribers: Vec<_> =
            members.iter().map(|e| serde_json::json!({"email": e, "dataFields": {"tier": tier}})).collect();
        env.post_api("/api/lists/subscribe", serde_json::json!({"listId": id, "subscribers": subscribers}));
    }
    assert_eq!(env.list_id("VIP"), Some(1000));
    assert_eq!(env.list_id("Churn"), Some(1001));
}

#[test]
fn a_store_from_before_the_upgrade_keeps_its_exports_history_and_memory() {
    let env = Env::new();
    install_fixture(&env);

    let exports = env.json(&["export", "list"]);
    let names: Vec<&str> = exports.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["exp-a", "exp-b"], "{exports}");
    // Its segments read files outside any allowed folder (there is none): they count as saved from the CLI.
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM segments WHERE origin = 'cli'"), 2);
    let runs = env.json(&["runs"]);
    assert_eq!(runs.as_array().unwrap().len(), 2, "run history survives: {runs}");
    let shown = env.json(&["export", "show", "exp-a"]);
    assert_eq!(shown["lists"][0]["list_id"], 1000, "{shown}");
    assert_eq!(shown["lists"][0]["members"], 20, "{shown}");
    assert_eq!(shown["lists"][1]["members"], 10, "{shown}");
    assert_eq!(shown["null_fields"], "skip", "an upgraded export keeps leaving NULL fields out: {shown}");
    let connections = env.json(&["connection", "list"]);
    assert!(connections.as_array().unwrap().iter().all(|c| c["project_type"] == "email"), "{connections}");

    // Nothing changed in the segments: the upgraded exports send nothing, the legacy pair included.
    env.sandbox.reset_stats();
    for export in ["exp-a", "exp-b"] {
        let report = env.json(&["export", "run", export]);
        assert_eq!(report["status"], "succeeded", "{report}");
    }
    let stats = env.stats();
    assert_eq!(requests(&stats, "lists.subscribe"), 0, "{stats:?}");
    assert_eq!(requests(&stats, "lists.unsubscribe"), 0, "{stats:?}");
    assert_eq!(requests(&stats, "lists.create"), 0, "{stats:?}");

    // A member leaves VIP: the export that put it there removes it; the list stays exact.
    let stayed = vip()[1..].to_vec();
    let rows: Vec<(&str, &str)> = stayed.iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv("vip.csv", &rows);
    let report = env.json(&["export", "run", "exp-a"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["removed"], 1, "{report}");
    assert_eq!(env.members("VIP"), sorted(stayed));
    assert_eq!(env.members("Churn"), sorted(churn()));
}
