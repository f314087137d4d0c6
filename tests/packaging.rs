//! The systemd unit and the shipped configs are checked with the real tools where they exist.

use std::process::Command;

#[test]
#[ignore = "needs systemd-analyze; .ci/run runs it where it is installed"]
fn the_systemd_unit_passes_systemd_analyze_verify_without_warnings() {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze is not installed on this machine, so the unit cannot be verified");
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string("packaging/systemd/segment-exporter.service").unwrap();
    // verify checks that ExecStart points at an executable: use the binary under test.
    let bin = assert_cmd::cargo::cargo_bin("segment-exporter");
    let path = dir.path().join("segment-exporter.service");
    std::fs::write(&path, unit.replace("/usr/bin/segment-exporter", bin.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.trim().is_empty(), "systemd-analyze warned:\n{err}");
    for needed in [
        "Type=notify",
        "ExecStartPre=/usr/bin/segment-exporter validate",
        "RestartPreventExitStatus=78",
        "LoadCredential=",
        "ProtectSystem=strict",
        "UMask=077",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_cover_the_commands_and_bash_parses_its_script() {
    let bin = assert_cmd::cargo::cargo_bin("segment-exporter");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(&bin).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["connection", "segment", "export", "runs", "daemon", "dry-run", "json"] {
            assert!(script.contains(word), "the {shell} completions lack {word}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("completions.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
        }
    }
    let out = Command::new(&bin).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"), "the error lists the shells");
}

#[test]
fn the_man_page_is_roff_naming_every_command_and_the_image_and_unit_install_it() {
    let bin = assert_cmd::cargo::cargo_bin("segment-exporter");
    let out = Command::new(&bin).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH segment-exporter 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "the man page lacks {section}");
    }
    for command in ["connection", "segment", "export", "daemon", "validate", "completions"] {
        assert!(page.contains(command), "the man page lacks {command}");
    }
    let dockerfile = std::fs::read_to_string("Dockerfile").unwrap();
    assert!(dockerfile.contains("segment-exporter man >"), "the image installs the man page");
    assert!(dockerfile.contains("completions bash"), "the image installs bash completions");
    let unit = std::fs::read_to_string("packaging/systemd/segment-exporter.service").unwrap();
    assert!(unit.contains("segment-exporter man >"), "the unit's install steps install the man page");
}

#[test]
fn the_readme_links_only_files_in_the_repository() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut rest = readme.as_str();
    let mut checked = 0;
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let end = after.find(')').unwrap();
        let target = &after[..end];
        if !target.starts_with("http") && !target.starts_with('#') {
            assert!(!target.starts_with(".."), "the README links outside the repository: {target}");
            assert!(std::path::Path::new(target).exists(), "the README links a missing file: {target}");
            checked += 1;
        }
        rest = &after[end..];
    }
    assert!(checked >= 2, "only {checked} links checked");
}

#[test]
fn the_docker_example_gives_the_daemon_more_time_to_stop_than_its_shutdown_grace() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let timeout: u64 = readme
        .split("--stop-timeout ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .expect("the README's docker run example sets --stop-timeout");
    let text = std::fs::read_to_string("packaging/docker/segment-exporter.toml").unwrap();
    let config =
        segment_exporter::config::Config::parse(&text, std::path::Path::new("packaging/docker/segment-exporter.toml"))
            .unwrap();
    assert!(
        std::time::Duration::from_secs(timeout) > config.daemon.shutdown_grace,
        "--stop-timeout {timeout} is not longer than shutdown_grace {:?}",
        config.daemon.shutdown_grace
    );
}

#[test]
fn the_demo_shows_its_build_instead_of_hiding_minutes_of_compiling() {
    let demo = std::fs::read_to_string("scripts/demo.sh").unwrap();
    let build = demo.lines().find(|l| l.trim_start().starts_with("cargo build")).expect("the demo builds");
    assert!(!build.contains("--quiet") && !build.contains(" -q"), "{build}");
}

#[test]
fn output_cut_short_by_a_reader_is_not_a_crash() {
    let bin = assert_cmd::cargo::cargo_bin("segment-exporter");
    for args in [&["man"][..], &["--json", "man"], &["completions", "bash"], &["--json", "completions", "bash"]] {
        // The reader is gone before the command writes a byte, as with `| head` on a long output.
        let mut child = Command::new(&bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} with its reader gone panicked: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
