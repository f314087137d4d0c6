//! End-to-end: batches Iterable refuses as a whole (a field type one member gets wrong, a body too large) are split
//! until the members it refuses are alone; they are rejected with Iterable's reason and the rest reach the list.

mod common;

use common::*;
use serde_json::{json, Value};

/// POSTs `body` to the sandbox's `path` with the test key and returns the answer's JSON.
fn post(env: &Env, path: &str, body: Value) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}{path}", env.base_url))
            .header("Api-Key", KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

/// Someone else's list and user fix the project's field `code` as a number, as Iterable fixes a field's type at
/// its first value.
fn fix_code_as_long(env: &Env) {
    let list = post(env, "/api/lists", json!({"name": "Elsewhere"}))["listId"].as_i64().unwrap();
    let answer = post(
        env,
        "/api/lists/subscribe",
        json!({"listId": list, "subscribers": [{"email": "other@example.com", "dataFields": {"code": 7}}]}),
    );
    assert_eq!(answer["createdFields"], json!(["code"]), "{answer}");
}

fn rejected_issues(env: &Env, run_id: &str) -> Vec<Value> {
    let shown = env.json(&["runs", "show", run_id, "--rejected"]);
    shown["issues"].as_array().unwrap().iter().filter(|i| i["kind"] == "rejected").cloned().collect()
}

#[test]
fn three_members_with_a_conflicting_field_type_among_a_thousand_are_rejected_and_the_other_997_reach_the_list() {
    let env = Env::new();
    fix_code_as_long(&env);
    let members = emails(0, 1000);
    let bad = [&members[17], &members[503], &members[998]];
    let mut csv = String::from("email,tier,code\n");
    for m in &members {
        let code = if bad.contains(&m) { "abc" } else { "" };
        csv.push_str(&format!("{m},gold,{code}\n"));
    }
    std::fs::write(env.path("members.csv"), csv).unwrap();
    env.add_connection();
    env.ok(&["segment", "add", "Typed", "--source", &format!("csv:{}", env.path("members.csv").display())]);
    env.ok(&["export", "add", "exp", "--connection", "iterable", "--segment", "Typed", "--email-field", "email"]);
    env.ok(&["export", "edit", "exp", "--add-field", "tier", "--add-field", "code"]);

    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["rejected"].as_u64()), (Some(997), Some(3)));
    let good: Vec<String> = members.iter().filter(|m| !bad.contains(m)).cloned().collect();
    assert_eq!(env.members("Typed"), sorted(good));
    let issues = rejected_issues(&env, &report["run_id"].to_string());
    let mut named: Vec<String> = issues.iter().map(|i| i["member"].as_str().unwrap().to_string()).collect();
    named.sort();
    assert_eq!(named, sorted(bad.iter().map(|m| m.to_string()).collect()));
    for issue in &issues {
        let reason = issue["reason"].as_str().unwrap();
        assert!(
            reason.contains("RequestFieldsTypesMismatched") && reason.contains("code: expected long, got string"),
            "{reason}"
        );
    }

    // Rejected members follow the retry rules of rejected members: not sent again by a run with no change.
    env.sandbox.reset_stats();
    let again = env.json(&["export", "run", "exp"]);
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(env.stats().subscribers_received, 0, "{:?}", env.stats());
}

#[test]
fn after_a_batch_too_large_the_run_goes_on_with_smaller_batches_and_a_member_too_large_alone_is_rejected() {
    // Iterable takes less than the exporter's own cap: 2000 bytes hold about 35 of these members, not 50.
    let env = Env::with_sandbox(segment_exporter::sandbox::SandboxOptions { max_body_bytes: 2000, ..opts() });
    let members = emails(0, 1000);
    let huge = "x".repeat(3000);
    let mut rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    rows.push(("big@example.com", &huge));
    let csv = env.write_csv("members.csv", &rows);
    env.add_connection();
    env.add_segment_and_export("Sized", &format!("csv:{}", csv.display()), None);

    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("Sized"), sorted(members.clone()));
    assert_eq!(report["lists"][0]["rejected"], 1, "{report}");
    let issues = rejected_issues(&env, &report["run_id"].to_string());
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0]["member"], "big@example.com");
    assert!(issues[0]["reason"].as_str().unwrap().contains("BatchTooLarge"), "{issues:?}");

    // Each refusal of a full batch is met by halving the batches that follow: a handful of refusals, not one per
    // batch. The oversize member costs its own few (its batch halved down to it alone).
    let stats = env.stats();
    let refused = stats.answered_with("lists.subscribe", 400);
    let accepted = stats.answered_with("lists.subscribe", 200);
    assert!(refused <= 12, "{refused} refusals: {stats:?}");
    assert!(accepted <= 1000 / 25 + 12, "{accepted} batches: {stats:?}");
}
