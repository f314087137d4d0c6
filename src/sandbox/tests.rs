//! End-to-end tests of the sandbox over real HTTP with reqwest: each test spawns its own sandbox on
//! port 0 and checks the answers a client of Iterable would rely on.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use super::{Faults, Sandbox, SandboxOptions, SandboxStats};

const KEY: &str = "sandbox-key";

struct Fixture {
    sandbox: Sandbox,
    base: String,
    client: Client,
}

impl Fixture {
    /// The documented per-endpoint limits (5 getUsers a minute) are off unless a test asks for them, so tests
    /// can read lists as often as they check them.
    async fn start(opts: SandboxOptions) -> Self {
        Self::start_as_is(SandboxOptions { documented_limits: false, ..opts }).await
    }

    async fn start_as_is(opts: SandboxOptions) -> Self {
        let sandbox = Sandbox::new(opts);
        let (base, _task) = sandbox.clone().spawn().await.expect("sandbox binds");
        Self { sandbox, base, client: Client::new() }
    }

    async fn default() -> Self {
        Self::start(SandboxOptions::default()).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).header("Api-Key", KEY).send().await.expect("request completes")
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.try_post(path, body).await.expect("request completes")
    }

    async fn try_post(&self, path: &str, body: Value) -> reqwest::Result<reqwest::Response> {
        self.client.post(self.url(path)).header("Api-Key", KEY).json(&body).send().await
    }

    async fn create_list(&self, name: &str) -> i64 {
        let response = self.post("/api/lists", json!({ "name": name })).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["listId"].as_i64().expect("listId is a number")
    }

    async fn subscribe(&self, list_id: i64, emails: &[&str]) -> reqwest::Response {
        let subscribers: Vec<Value> = emails.iter().map(|e| json!({ "email": e })).collect();
        let body = json!({ "listId": list_id, "subscribers": subscribers });
        self.post("/api/lists/subscribe", body).await
    }

    async fn unsubscribe(&self, list_id: i64, emails: &[&str]) -> reqwest::Response {
        let subscribers: Vec<Value> = emails.iter().map(|e| json!({ "email": e })).collect();
        let body = json!({ "listId": list_id, "subscribers": subscribers, "channelUnsubscribe": false });
        self.post("/api/lists/unsubscribe", body).await
    }
}

fn empty_failed_updates() -> Value {
    json!({
        "invalidEmails": [], "invalidUserIds": [], "notFoundEmails": [], "notFoundUserIds": [],
        "forgottenEmails": [], "forgottenUserIds": [], "conflictEmails": [], "conflictUserIds": [],
        "invalidDataEmails": [], "invalidDataUserIds": []
    })
}

#[tokio::test]
async fn requests_without_a_valid_api_key_answer_401_with_bad_api_key() {
    let fx = Fixture::default().await;
    let missing = fx.client.get(fx.url("/api/lists")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(
        body,
        json!({"msg": "Invalid API key", "code": "BadApiKey",
               "params": {"ip": "127.0.0.1", "endpoint": "/api/lists"}})
    );

    let wrong = fx
        .client
        .post(fx.url("/api/lists/subscribe"))
        .header("Api-Key", "not-the-key")
        .json(&json!({"listId": 1000, "subscribers": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["params"]["endpoint"], "/api/lists/subscribe");

    let underscore = fx.client.get(fx.url("/api/lists")).header("Api_Key", KEY).send().await.unwrap();
    assert_eq!(underscore.status(), StatusCode::OK);
    assert_eq!(fx.sandbox.stats().answered_with("lists.get", 401), 1);
}

#[tokio::test]
async fn a_list_round_trips_through_create_subscribe_get_users_size_and_unsubscribe() {
    let fx = Fixture::default().await;
    let created = fx.post("/api/lists", json!({"name": "Trial users", "description": "From the sandbox"})).await;
    assert_eq!(created.status(), StatusCode::OK);
    let list_id = created.json::<Value>().await.unwrap()["listId"].as_i64().unwrap();
    assert!(list_id >= 1000);

    let lists: Value = fx.get("/api/lists").await.json().await.unwrap();
    let listed = &lists["lists"][0];
    assert_eq!(listed["id"], list_id);
    assert_eq!(listed["name"], "Trial users");
    assert_eq!(listed["description"], "From the sandbox");
    assert_eq!(listed["listType"], "Standard");
    assert!(listed["createdAt"].as_i64().unwrap() > 1_600_000_000_000);

    let subscribed = fx.subscribe(list_id, &["Carol@Example.com", "alice@example.com", "bob@example.org"]).await;
    assert_eq!(subscribed.status(), StatusCode::OK);
    let body: Value = subscribed.json().await.unwrap();
    assert_eq!(
        body,
        json!({"successCount": 3, "failCount": 0, "createdFields": [], "filteredOutFields": [],
               "failedUpdates": empty_failed_updates(), "invalidEmails": [], "invalidUserIds": []})
    );

    let users = fx.get(&format!("/api/lists/getUsers?listId={list_id}")).await;
    assert_eq!(users.status(), StatusCode::OK);
    assert!(users.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(users.text().await.unwrap(), "alice@example.com\nbob@example.org\ncarol@example.com\n");

    let size = fx.get(&format!("/api/lists/{list_id}/size")).await;
    assert_eq!(size.text().await.unwrap(), "3");

    let preview = fx.get(&format!("/api/lists/previewUsers?listId={list_id}&size=2")).await.text().await.unwrap();
    let sampled: Vec<&str> = preview.lines().collect();
    assert_eq!(sampled.len(), 2);
    let members = fx.sandbox.list_members(list_id).unwrap();
    assert!(sampled.iter().all(|email| members.iter().any(|m| m == email)));

    let unsubscribed = fx.unsubscribe(list_id, &["ALICE@example.com", "nobody@example.com"]).await;
    assert_eq!(unsubscribed.status(), StatusCode::OK);
    let body: Value = unsubscribed.json().await.unwrap();
    assert_eq!(body["successCount"], 1);
    assert_eq!(body["failCount"], 1);
    assert_eq!(body["failedUpdates"]["notFoundEmails"], json!(["nobody@example.com"]));
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["bob@example.org", "carol@example.com"]);

    let stats = fx.sandbox.stats();
    assert_eq!(stats.requests["lists.subscribe"], 1);
    assert_eq!(stats.answered_with("lists.unsubscribe", 200), 1);
    assert_eq!(stats.subscribers_received, 3);
    assert_eq!(stats.unsubscribers_received, 2);
}

#[tokio::test]
async fn invalid_and_forgotten_emails_are_reported_and_not_subscribed() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Mixed").await;
    let response = fx
        .subscribe(list_id, &["user @example.com", "no-tld@example", "gone+forgotten@example.com", "ok@example.com"])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["successCount"], 1);
    assert_eq!(body["failCount"], 3);
    let invalid = json!(["user @example.com", "no-tld@example"]);
    assert_eq!(body["failedUpdates"]["invalidEmails"], invalid);
    assert_eq!(body["invalidEmails"], invalid);
    assert_eq!(body["failedUpdates"]["forgottenEmails"], json!(["gone+forgotten@example.com"]));
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["ok@example.com"]);
}

#[tokio::test]
async fn a_field_whose_type_conflicts_refuses_the_whole_request_and_new_fields_are_reported_as_created() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Typed").await;
    let first = fx
        .post(
            "/api/lists/subscribe",
            json!({"listId": list_id, "subscribers": [
                {"email": "a@example.com", "dataFields": {"plan": "pro", "seats": 3}}]}),
        )
        .await;
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["createdFields"], json!(["plan", "seats"]));

    let second = fx
        .post(
            "/api/lists/subscribe",
            json!({"listId": list_id, "subscribers": [
                {"email": "b@example.com", "dataFields": {"seats": "three"}},
                {"email": "c@example.com", "dataFields": {"seats": 4, "region": "eu"}}]}),
        )
        .await;
    assert_eq!(second.status(), StatusCode::BAD_REQUEST);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["code"], "RequestFieldsTypesMismatched");
    let seats = &body["params"]["validationErrors"]["seats"];
    assert_eq!((seats["expectedType"].clone(), seats["incomingTypes"].clone()), (json!("long"), json!(["string"])));
    assert_eq!(seats["offendingValue"], "three");
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["a@example.com"], "nothing of the request applied");

    // Types set earlier in the same request count too; a whole number fits a double field.
    let third = fx
        .post(
            "/api/lists/subscribe",
            json!({"listId": list_id, "subscribers": [
                {"email": "d@example.com", "dataFields": {"score": 1.5}},
                {"email": "e@example.com", "dataFields": {"score": 2}},
                {"email": "f@example.com", "dataFields": {"score": true}}]}),
        )
        .await;
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["code"], "RequestFieldsTypesMismatched", "{body}");
    assert_eq!(body["params"]["validationErrors"]["score"]["expectedType"], "double");
    let fourth = fx
        .post(
            "/api/lists/subscribe",
            json!({"listId": list_id, "subscribers": [
                {"email": "c@example.com", "dataFields": {"seats": 4, "region": "eu", "score": 1.5}},
                {"email": "e@example.com", "dataFields": {"score": 2, "seats": null}}]}),
        )
        .await;
    let body: Value = fourth.json().await.unwrap();
    assert_eq!((body["successCount"].clone(), body["createdFields"].clone()), (json!(2), json!(["region", "score"])));
}

#[tokio::test]
async fn creating_a_list_with_an_existing_name_creates_a_second_list() {
    let fx = Fixture::default().await;
    let first = fx.create_list("Churn risk").await;
    let second = fx.create_list("Churn risk").await;
    assert_ne!(first, second);
    let lists: Value = fx.get("/api/lists").await.json().await.unwrap();
    let same_name = lists["lists"].as_array().unwrap().iter().filter(|l| l["name"] == "Churn risk").count();
    assert_eq!(same_name, 2);
}

#[tokio::test]
async fn subscribe_to_unknown_list_answers_400_with_code_success() {
    let fx = Fixture::default().await;
    let response = fx.subscribe(999_999_999, &["a@example.com"]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"msg": "error.lists.invalidListId(999999999)", "code": "Success",
               "params": {"projectId": 1, "listId": 999_999_999}})
    );
    let unsubscribe = fx.unsubscribe(999_999_999, &["a@example.com"]).await;
    assert_eq!(unsubscribe.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deleting_a_list_answers_success_and_an_unknown_list_answers_400() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Short-lived").await;
    let url = fx.url(&format!("/api/lists/{list_id}"));
    let deleted = fx.client.delete(&url).header("Api-Key", KEY).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let body: Value = deleted.json().await.unwrap();
    assert_eq!(body["code"], "Success");
    assert!(body["params"].is_null());
    assert_eq!(fx.sandbox.list_members(list_id), None);

    let again = fx.client.delete(&url).header("Api-Key", KEY).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["code"], "BadParams");
    assert_eq!(body["msg"], format!("error.lists.invalidListId({list_id})"));

    let users = fx.get(&format!("/api/lists/getUsers?listId={list_id}")).await;
    assert_eq!(users.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unsubscribe_without_an_explicit_channel_unsubscribe_false_answers_400() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Careful").await;
    fx.subscribe(list_id, &["a@example.com"]).await;
    for flag in [None, Some(true)] {
        let mut body = json!({"listId": list_id, "subscribers": [{"email": "a@example.com"}]});
        if let Some(flag) = flag {
            body["channelUnsubscribe"] = json!(flag);
        }
        let response = fx.post("/api/lists/unsubscribe", body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "BadParams");
        assert!(body["msg"].as_str().unwrap().contains("channelUnsubscribe"));
    }
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["a@example.com"]);
}

#[tokio::test]
async fn exceeding_the_rate_limit_answers_429_without_applying_the_change() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Limited").await;
    fx.sandbox.set_faults(Faults { rate_limit: Some(Some(1.0)), ..Faults::default() });
    let allowed = fx.subscribe(list_id, &["first@example.com"]).await;
    assert_eq!(allowed.status(), StatusCode::OK);
    let refused = fx.subscribe(list_id, &["second@example.com"]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().get("retry-after").is_none());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body,
        json!({"msg": "Exceeded rate limit for endpoint: /api/lists/subscribe, project: 1",
               "code": "RateLimitExceeded",
               "params": {"rateLimitLimit": 1, "rateLimitRemaining": 0, "rateLimitReset": 1}})
    );
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["first@example.com"]);
    assert_eq!(fx.sandbox.stats().rate_limited, 1);
}

#[tokio::test]
async fn rate_limited_answers_carry_retry_after_when_enabled() {
    let fx =
        Fixture::start(SandboxOptions { rate_limit: Some(0.5), retry_after: true, ..SandboxOptions::default() }).await;
    assert_eq!(fx.get("/api/lists").await.status(), StatusCode::OK);
    let refused = fx.get("/api/lists").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 2);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["params"]["rateLimitReset"], 2);
}

#[tokio::test]
async fn a_body_over_the_limit_answers_400_batch_too_large() {
    let fx = Fixture::start(SandboxOptions { max_body_bytes: 1_000, ..SandboxOptions::default() }).await;
    let list_id = fx.create_list("Small bodies").await;
    let emails: Vec<String> = (0..100).map(|i| format!("user{i}@example.com")).collect();
    let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
    let response = fx.subscribe(list_id, &emails).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "BatchTooLarge");
    assert!(body["params"].is_null());
    assert!(fx.sandbox.list_members(list_id).unwrap().is_empty());
}

#[tokio::test]
async fn bodies_above_axums_default_limit_are_accepted_up_to_max_body_bytes() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Big bodies").await;
    let padding = "x".repeat(3_000_000);
    let body = json!({"listId": list_id, "subscribers": [
        {"email": "big@example.com", "dataFields": {"notes": padding}}]});
    let response = fx.post("/api/lists/subscribe", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["big@example.com"]);
}

#[tokio::test]
async fn a_new_list_answers_invalid_list_id_until_propagation_has_passed() {
    let fx =
        Fixture::start(SandboxOptions { list_propagation: Duration::from_millis(300), ..SandboxOptions::default() })
            .await;
    let list_id = fx.create_list("Fresh").await;
    let early = fx.subscribe(list_id, &["a@example.com"]).await;
    assert_eq!(early.status(), StatusCode::BAD_REQUEST);
    let body: Value = early.json().await.unwrap();
    assert_eq!(body["msg"], format!("error.lists.invalidListId({list_id})"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let later = fx.subscribe(list_id, &["a@example.com"]).await;
    assert_eq!(later.status(), StatusCode::OK);
}

#[tokio::test]
async fn failures_answer_500_without_applying_or_apply_and_then_drop_the_connection() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Flaky").await;
    fx.sandbox.set_faults(Faults { fail_rate: Some(1.0), ..Faults::default() });
    let mut dropped = BTreeSet::new();
    let mut server_errors = 0;
    for i in 0..200 {
        let email = format!("user{i}@example.com");
        let body = json!({"listId": list_id, "subscribers": [{"email": email}]});
        match fx.try_post("/api/lists/subscribe", body).await {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "GenericError");
                server_errors += 1;
            }
            Err(error) => {
                assert!(error.status().is_none(), "a transport error, not an answer");
                dropped.insert(email);
            }
        }
        if server_errors >= 3 && dropped.len() >= 3 {
            break;
        }
    }
    assert!(server_errors >= 3, "saw {server_errors} answers of 500");
    assert!(dropped.len() >= 3, "saw {} dropped connections", dropped.len());
    let members: BTreeSet<String> = fx.sandbox.list_members(list_id).unwrap().into_iter().collect();
    assert_eq!(members, dropped, "only dropped requests were applied");
    let stats = fx.sandbox.stats();
    assert_eq!(stats.dropped_connections, dropped.len() as u64);
    assert_eq!(stats.answered_with("lists.subscribe", 500), server_errors);
}

#[tokio::test]
async fn latency_delays_every_api_answer() {
    let fx = Fixture::start(SandboxOptions { latency: Duration::from_millis(200), ..SandboxOptions::default() }).await;
    let started = Instant::now();
    let response = fx.get("/api/lists").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn malformed_bodies_and_missing_fields_answer_400_envelopes() {
    let fx = Fixture::default().await;
    let garbage =
        fx.client.post(fx.url("/api/lists/subscribe")).header("Api-Key", KEY).body("{not json").send().await.unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert_eq!(garbage.json::<Value>().await.unwrap()["code"], "BadJsonBody");

    let no_list = fx.post("/api/lists/subscribe", json!({"subscribers": []})).await;
    assert_eq!(no_list.status(), StatusCode::BAD_REQUEST);
    assert_eq!(no_list.json::<Value>().await.unwrap()["code"], "BadParams");

    let unnamed = fx.post("/api/lists", json!({"name": ""})).await;
    assert_eq!(unnamed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(unnamed.json::<Value>().await.unwrap()["code"], "BadParams");
}

#[tokio::test]
async fn unknown_api_routes_answer_404_with_a_plain_page() {
    let fx = Fixture::default().await;
    let response = fx.get("/api/lists/nonsense/deeper").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(fx.sandbox.stats().answered_with("unknown", 404), 1);
}

#[tokio::test]
async fn control_endpoints_change_faults_and_report_and_reset_stats() {
    let fx = Fixture::default().await;
    let changed = fx
        .client
        .post(fx.url("/_sandbox/faults"))
        .json(&json!({"latency_ms": 5, "rate_limit": 50, "retry_after": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let settings: Value = changed.json().await.unwrap();
    assert_eq!(
        settings,
        json!({"latency_ms": 5, "rate_limit": 50.0, "fail_rate": 0.0, "retry_after": true, "miscount_rate": 0.0,
               "miscount_next": 0, "truncate_next": 0})
    );

    let off = fx.client.post(fx.url("/_sandbox/faults")).json(&json!({"rate_limit": null})).send().await.unwrap();
    assert_eq!(off.json::<Value>().await.unwrap()["rate_limit"], Value::Null);

    let refused = fx.client.post(fx.url("/_sandbox/faults")).json(&json!({"fail_rate": 2})).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fx.sandbox.faults().fail_rate, 0.0);

    fx.get("/api/lists").await;
    let stats: SandboxStats = fx.client.get(fx.url("/_sandbox/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats.total_requests, 1);
    assert_eq!(stats.answered_with("lists.get", 200), 1);

    let reset = fx.client.post(fx.url("/_sandbox/reset-stats")).send().await.unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    assert_eq!(fx.sandbox.stats(), SandboxStats::default());
}

#[tokio::test]
async fn get_users_and_size_answer_429_after_five_calls_a_minute_like_iterable() {
    let fx = Fixture::start_as_is(SandboxOptions::default()).await;
    let list_id = fx.create_list("Rationed").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = fx
            .client
            .get(format!("{}/api/lists/getUsers?listId={list_id}", fx.base))
            .header("Api-Key", "sandbox-key")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status().as_u16() == 429 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "RateLimitExceeded");
            assert_eq!(body["params"]["rateLimitLimit"], 5);
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
    // Other endpoints keep their own budgets.
    let r = fx.client.get(format!("{}/api/lists", fx.base)).header("Api-Key", "sandbox-key").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn miscounted_answers_apply_nothing_and_truncated_ones_apply_but_cut_the_body() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Counted").await;
    let set = fx
        .client
        .post(fx.url("/_sandbox/faults"))
        .json(&json!({"miscount_next": 1, "truncate_next": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);

    let miscounted = fx.subscribe(list_id, &["a@example.com", "b@example.com"]).await;
    assert_eq!(miscounted.status(), StatusCode::OK);
    let body: Value = miscounted.json().await.unwrap();
    assert_eq!((body["successCount"].as_u64(), body["failCount"].as_u64()), (Some(0), Some(0)));
    assert_eq!(fx.sandbox.list_members(list_id).unwrap().len(), 0, "a miscounted answer applies nothing");

    let truncated = fx.subscribe(list_id, &["a@example.com"]).await;
    assert_eq!(truncated.status(), StatusCode::OK);
    let text = truncated.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "not JSON: {text}");
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["a@example.com"]);

    let normal = fx.subscribe(list_id, &["b@example.com"]).await;
    assert_eq!(normal.json::<Value>().await.unwrap()["successCount"], 1);
    assert_eq!(fx.sandbox.stats().bad_answers, 2);
}

#[tokio::test]
async fn chosen_members_are_refused_as_invalid_data_until_the_choice_is_cleared() {
    let fx = Fixture::default().await;
    let list_id = fx.create_list("Picky").await;
    let set = fx.client.post(fx.url("/_sandbox/reject")).json(&json!({"emails": ["B@example.com"]})).send().await;
    assert_eq!(set.unwrap().status(), StatusCode::OK);
    let body: Value = fx.subscribe(list_id, &["a@example.com", "b@example.com"]).await.json().await.unwrap();
    assert_eq!((body["successCount"].as_u64(), body["failCount"].as_u64()), (Some(1), Some(1)));
    assert_eq!(body["failedUpdates"]["invalidDataEmails"], json!(["b@example.com"]));
    assert_eq!(fx.sandbox.list_members(list_id).unwrap(), vec!["a@example.com"]);
    fx.sandbox.set_rejected::<&str>(&[]);
    let body: Value = fx.subscribe(list_id, &["b@example.com"]).await.json().await.unwrap();
    assert_eq!(body["successCount"], 1);
}

#[tokio::test]
async fn held_requests_wait_until_the_hold_is_lifted_then_all_go_on() {
    let fx = Fixture::default().await;
    fx.sandbox.set_faults(Faults { hold: Some(true), ..Faults::default() });
    assert!(fx.sandbox.faults().hold);
    let waiting = tokio::spawn({
        let (client, url) = (fx.client.clone(), fx.url("/api/lists"));
        async move { client.get(url).header("Api-Key", KEY).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a held request was answered");
    assert_eq!(fx.sandbox.stats().held, 1);
    // The control endpoints are not held: that is how the hold is lifted over HTTP.
    let lifted = fx.client.post(fx.url("/_sandbox/faults")).json(&json!({"hold": false})).send().await.unwrap();
    assert_eq!(lifted.status(), StatusCode::OK);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("answered once lifted").unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fx.sandbox.stats().held, 0);
}
