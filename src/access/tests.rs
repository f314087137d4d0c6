//! The permission matrix: every action against every kind of actor, with the verdict each must get.

use chrono::Utc;

use super::*;

fn user(id: i64, role: Role) -> Actor {
    Actor::User(User {
        id,
        name: format!("u{id}"),
        role,
        has_password: false,
        token_created_at: Utc::now(),
        created_at: Utc::now(),
    })
}

/// The actors of the matrix, and the export each one looks at.
fn cases() -> Vec<(&'static str, Actor, &'static str, ExportFacts)> {
    let open = |users: Vec<i64>| ExportFacts {
        connection_usable_by: Some(USABLE_BY_CONTRIBUTORS.into()),
        export_user_ids: users,
    };
    vec![
        ("local admin", Actor::local(), "contributors", open(vec![])),
        ("admin", user(1, Role::Admin), "contributors", open(vec![])),
        ("contributor export user", user(2, Role::Contributor), "contributors", open(vec![2])),
        ("contributor not export user", user(3, Role::Contributor), "contributors", open(vec![2])),
        (
            "contributor on an admins-only connection",
            user(4, Role::Contributor),
            "admins",
            ExportFacts { connection_usable_by: Some("admins".into()), export_user_ids: vec![4] },
        ),
    ]
}

#[test]
fn every_action_gets_the_expected_verdict_for_every_kind_of_actor() {
    use Verdict::{Allow as A, Forbidden as F, NotFound as N};
    type Check = fn(&Actor, &str, &ExportFacts) -> Verdict;
    let actions: Vec<(&str, Check, [Verdict; 5])> = vec![
        ("see connection", |a, u, _| see_connection(a, u), [A, A, A, A, N]),
        ("use connection (create an export on it)", |a, u, _| use_connection(a, u), [A, A, A, A, N]),
        ("see connection key", |a, _, _| see_connection_key(a), [A, A, F, F, F]),
        ("add connection", |a, _, _| add_connection(a), [A, A, F, F, F]),
        ("edit/remove connection, become its export user", |a, u, _| manage_connection(a, u), [A, A, F, F, N]),
        ("see export and its runs", |a, _, f| see_export(a, f), [A, A, A, N, A]),
        ("edit export, its users; remove it", |a, _, f| change_export(a, f), [A, A, A, N, A]),
        ("run export", |a, _, f| run_export(a, f), [A, A, A, N, F]),
        ("see segments' names and sizes", |a, _, _| see_segments(a), [A, A, A, A, A]),
        ("see segment source", |a, _, _| see_segment_source(a), [A, A, F, F, F]),
        ("add/edit/remove segment", |a, _, _| manage_segments(a), [A, A, F, F, F]),
        ("manage users", |a, _, _| manage_users(a), [A, A, F, F, F]),
        // Account 2 is the "contributor export user" of the cases.
        ("see and end account 2's sessions", |a, _, _| manage_sessions(a, 2), [A, A, A, N, N]),
        ("read audit", |a, _, _| read_audit(a), [A, A, F, F, F]),
    ];
    let mut wrong = Vec::new();
    for (action, check, expected) in &actions {
        for ((who, actor, usable_by, facts), want) in cases().iter().zip(expected) {
            let got = check(actor, usable_by, facts);
            if got != *want {
                wrong.push(format!("{action} by {who}: got {got:?}, expected {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_refusal_of_what_the_caller_may_not_see_reads_like_a_missing_thing() {
    let denied = see_export(&user(3, Role::Contributor), &ExportFacts::default()).check("export 'secret'");
    assert_eq!(denied.unwrap_err().to_string(), "export 'secret' does not exist");
}

#[test]
fn the_local_operator_is_named_by_user_then_logname_then_the_system_then_operator() {
    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }
    fn system(name: Option<&'static str>) -> impl FnOnce() -> Option<String> {
        move || name.map(String::from)
    }
    assert_eq!(os_user(env(&[("USER", "ann"), ("LOGNAME", "bob")]), system(Some("root"))), "ann");
    assert_eq!(os_user(env(&[("USER", " "), ("LOGNAME", "bob")]), system(Some("root"))), "bob");
    assert_eq!(os_user(env(&[]), system(Some("root"))), "root", "docker exec: neither variable is set");
    assert_eq!(os_user(env(&[("USER", "")]), system(None)), "operator", "a user id the system has no name for");
}
