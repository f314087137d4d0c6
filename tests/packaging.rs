//! The systemd unit and the shipped configs are checked with the real tools where they exist.

mod common;

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

/// The words of the unit header's `sudo systemd-run ...` recipe, split by bash as a user's shell would.
fn systemd_run_recipe() -> Vec<String> {
    let unit = std::fs::read_to_string("packaging/systemd/segment-exporter.service").unwrap();
    let mut recipe = String::new();
    let mut lines = unit.lines().map(|l| l.trim_start_matches('#').trim());
    let first =
        lines.by_ref().find(|l| l.starts_with("sudo systemd-run")).expect("the header has a systemd-run recipe");
    let mut line = first;
    loop {
        recipe.push_str(line.trim_end_matches('\\'));
        recipe.push(' ');
        if !line.ends_with('\\') {
            break;
        }
        line = lines.next().expect("the recipe's last line ends without a backslash");
    }
    let out = Command::new("bash").arg("-c").arg(format!("printf '%s\\0' {recipe}")).output().unwrap();
    assert!(out.status.success(), "bash cannot split the recipe: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_terminator('\0').map(String::from).collect()
}

/// What the service manager makes of a command line it is handed (systemd.service(5), "Command lines", as
/// `replace_env_argv` does it): a word that is `$NAME` alone is replaced by that variable's value split at
/// whitespace, or by nothing when there is no such variable; in other words `${NAME}` is replaced by the value and
/// `$$` by one `$`.
fn as_the_service_manager_runs_it(words: &[String], env: &[(&str, &str)]) -> Vec<String> {
    let var = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
    let mut out = Vec::new();
    for word in words {
        if word.starts_with('$') && !word.starts_with("${") && !word.starts_with("$$") {
            out.extend(var(&word[1..]).iter().flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>()));
            continue;
        }
        let (mut text, mut rest) = (String::new(), word.as_str());
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("$$") {
                text.push('$');
                rest = after;
            } else if let Some(braced) = rest.strip_prefix("${") {
                let end = braced.find('}').expect("a closed ${...}");
                text.push_str(&var(&braced[..end]).unwrap_or_default());
                rest = &braced[end + 1..];
            } else {
                text.push('$');
                rest = &rest[1..];
            }
        }
        text.push_str(rest);
        out.push(text);
    }
    out
}

#[test]
fn the_units_systemd_run_recipe_stores_the_credential_path_that_the_service_reads_its_key_from() {
    // The rule the recipe must live with, as the issue met it: a single $ starting a word loses the word.
    let dropped = as_the_service_manager_runs_it(
        &["--api-key-file".into(), "$CREDENTIALS_DIRECTORY/iterable-api-key".into()],
        &[("CREDENTIALS_DIRECTORY", "/run/credentials/run-u7.service")],
    );
    assert_eq!(dropped, vec!["--api-key-file"]);

    let words = systemd_run_recipe();
    let at = words.iter().position(|w| w == "/usr/bin/segment-exporter").expect("the recipe runs the binary");
    let options = &words[..at];
    let credential = options
        .iter()
        .filter_map(|w| w.strip_prefix("LoadCredential="))
        .next()
        .expect("the recipe hands the key over with LoadCredential=");
    let (id, _) = credential.split_once(':').unwrap();

    // The transient unit's credentials directory holds the key under the credential's id.
    let env = common::Env::new();
    let transient = env.path("run-u7.service");
    std::fs::create_dir(&transient).unwrap();
    std::fs::write(transient.join(id), common::KEY).unwrap();
    let transient = transient.to_str().unwrap().to_string();
    let argv = as_the_service_manager_runs_it(&words[at + 1..], &[("CREDENTIALS_DIRECTORY", &transient)]);
    let key_file = argv.iter().position(|w| w == "--api-key-file").expect("the key is read through --api-key-file");
    assert_eq!(argv[key_file + 1], "$CREDENTIALS_DIRECTORY/iterable-api-key", "{argv:?}");
    // As written, but checked against the sandbox rather than Iterable.
    let mut args = argv.clone();
    args.extend(["--base-url".to_string(), env.base_url.clone()]);
    let out = env.cmd().env("CREDENTIALS_DIRECTORY", &transient).args(&args).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));

    // The service, with credentials of its own elsewhere, reads its key from there.
    let service = env.path("segment-exporter.service");
    std::fs::create_dir(&service).unwrap();
    std::fs::write(service.join(id), common::KEY).unwrap();
    let shown =
        env.cmd().env("CREDENTIALS_DIRECTORY", &service).args(["--json", "connection", "show", "prod"]).output();
    let shown: serde_json::Value = serde_json::from_slice(&shown.unwrap().stdout).unwrap();
    assert_eq!(shown["api_key"], "file $CREDENTIALS_DIRECTORY/iterable-api-key (ends in …6789)", "{shown}");
    let tested =
        env.cmd().env("CREDENTIALS_DIRECTORY", &service).args(["connection", "test", "prod"]).output().unwrap();
    assert!(tested.status.success(), "{}", String::from_utf8_lossy(&tested.stderr));
}

#[test]
fn the_demo_stops_at_once_when_its_console_port_is_busy_saying_which_port_and_how_to_choose_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // In a terminal (util-linux `script`), where the demo would end with its web console.
    let demo = Command::new("script")
        .args(["-qec", &format!("DEMO_CONSOLE_PORT={port} ./scripts/demo.sh"), "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs the demo in a terminal");
    let said = String::from_utf8_lossy(&demo.stdout);
    assert!(!demo.status.success(), "{said}");
    assert!(!said.contains("Building"), "it checks the port before minutes of building: {said}");
    for words in [format!("port {port} on 127.0.0.1 is in use"), format!("DEMO_CONSOLE_PORT={}", port + 1)] {
        assert!(said.contains(&words), "{words:?} missing: {said}");
    }
    let bad = Command::new("script")
        .args(["-qec", "DEMO_CONSOLE_PORT=console ./scripts/demo.sh", "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("not a port number"));
}

#[test]
fn the_readme_docker_steps_run_in_order_against_the_images_configuration() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let section = &readme[readme.find("### Docker").expect("a Docker section")..];
    let block = &section[section.find("```sh").unwrap() + 5..];
    let block = &block[..block.find("```").unwrap()];
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let run = lines.iter().find(|l| l.starts_with("docker run")).expect("the block starts the container");
    assert!(run.contains(":/segments:ro"), "the segment's folder is mounted where its source says: {run}");

    // The container, as far as the steps see it: the image's config with /data and /segments in a folder here.
    let env = common::Env::new();
    let root = env.path("container");
    std::fs::create_dir_all(root.join("segments")).unwrap();
    std::fs::write(root.join("segments/vip.csv"), "email,first_name\nann@example.com,Ann\nbob@example.com,Bob\n")
        .unwrap();
    let inside = |text: &str| {
        text.replace("/data/", &format!("{}/data/", root.display()))
            .replace("/segments/", &format!("{}/segments/", root.display()))
    };
    let config = std::fs::read_to_string("packaging/docker/segment-exporter.toml").unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("image.toml"), inside(&config)).unwrap();
    let bin_dir = assert_cmd::cargo::cargo_bin("segment-exporter").parent().unwrap().to_path_buf();
    let steps: Vec<&String> = lines.iter().filter(|l| l.starts_with("docker exec segment-exporter ")).collect();
    assert!(steps.len() >= 5, "{steps:?}");
    for step in steps {
        let mut command = inside(step.trim_start_matches("docker exec segment-exporter "));
        if let Some(comment) = command.find("   #") {
            command.truncate(comment);
        }
        if command.contains("connection add") {
            // Checked against the sandbox rather than Iterable.
            command.push_str(&format!(" --base-url {}", env.base_url));
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(root.join("data"))
            .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
            .env("SEGMENT_EXPORTER_CONFIG", root.join("image.toml"))
            .env("ITERABLE_API_KEY", common::KEY)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "`{step}` failed:\n{said}");
    }
    assert!(root.join("data/triggers/marketing").exists(), "the trigger is where the daemon looks");
}

#[test]
fn the_compose_example_gives_each_replica_one_shared_store_its_secrets_from_files_and_time_to_hand_its_runs_over() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/compose");
    let (config, _) = segment_exporter::config::Config::load(Some(&dir.join("segment-exporter.toml")))
        .expect("the replicas' configuration is valid");
    let url = config.store.url.clone().expect("a PostgreSQL store");
    assert!(url::Url::parse(&url).unwrap().password().is_none(), "no password in the URL: {url}");
    assert!(config.store.password_file.is_some() && config.store.master_key_file.is_some());
    let compose = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    for path in ["./segment-exporter.toml", "./nginx.conf", "./segments"] {
        assert!(compose.contains(path) && dir.join(path).exists(), "{path}");
    }
    // Docker's stop waits longer than the daemon's grace, so a stopping replica hands its runs over cleanly.
    let grace = config.daemon.shutdown_grace.as_secs();
    let stop: u64 = compose.split("stop_grace_period: ").nth(1).unwrap().split('s').next().unwrap().parse().unwrap();
    assert!(stop > grace, "stop_grace_period {stop}s <= shutdown_grace {grace}s");
    let nginx = std::fs::read_to_string(dir.join("nginx.conf")).unwrap();
    assert!(nginx.contains("replica-a:9185") && nginx.contains("replica-b:9185"));
    assert!(nginx.contains("X-Forwarded-Host"), "the proxy forwards the host the browser addressed");
}
