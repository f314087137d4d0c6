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
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
}
