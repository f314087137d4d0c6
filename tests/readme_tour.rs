//! The README's tour runs as written: every command between its `tour:begin` and `tour:end` markers, in an empty
//! folder, with the real binary, against a sandbox standing where the README says (its address swapped for a free
//! port) and the local PostgreSQL.

mod common;

use std::process::Command;

use common::*;

/// The tour's command lines, with backslash continuations joined.
fn tour_lines() -> Vec<String> {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let start = readme.find("<!-- tour:begin -->").expect("the README marks its tour");
    let end = readme.find("<!-- tour:end -->").expect("the README marks the tour's end");
    let block = &readme[start..end];
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in block.lines().filter(|l| !l.starts_with("```") && !l.starts_with("<!--")) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn the_readme_tour_runs_as_written_against_the_sandbox_and_postgres() {
    std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL is not set; the tour's Churn risk segment reads PostgreSQL");
    // The sandbox accepts the README's key, and the harness's for its own checks.
    let env = Env::with_sandbox(segment_exporter::sandbox::SandboxOptions {
        api_keys: vec!["sandbox-key".into(), KEY.into()],
        ..opts()
    });
    let host = env.base_url.trim_start_matches("http://").to_string();
    let bin_dir = assert_cmd::cargo::cargo_bin("segment-exporter").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let folder = tempfile::tempdir().unwrap();
    let lines = tour_lines();
    assert!(lines.len() >= 10, "the tour is only {} commands", lines.len());
    for line in &lines {
        let line = line.replace("127.0.0.1:8085", &host);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{}\n{line}", exports(&lines)))
            .current_dir(folder.path())
            .env("PATH", &path)
            .env_remove("SEGMENT_EXPORTER_CONFIG")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "`{line}` failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    }
    // What the tour promises: both lists hold their segments.
    assert_eq!(env.members("Churn risk"), vec!["ann@example.com", "bob@example.com"]);
    let vip = env.members("VIP customers");
    assert!(vip.len() > 100, "{} VIP members", vip.len());
    assert!(folder.path().join("segment-exporter.db").exists(), "the store sits where a newcomer finds it");
}

/// The tour's `export VAR=...` lines, repeated before each command (each runs in a shell of its own).
fn exports(lines: &[String]) -> String {
    lines.iter().filter(|l| l.starts_with("export ")).cloned().collect::<Vec<_>>().join("\n")
}
