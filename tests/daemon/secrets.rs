//! Secrets and ssh agents forwarded through the session.

use super::*;

// Verifies: `--secret id=tok,src=FILE` and `--secret id=envtok,env=VAR` are served by the
// client's session and reach `RUN --mount=type=secret` as a file (default path and a target)
// and as an environment variable (the steps record their hashes); neither value is in any
// layer of the image or in the progress; the mount is gone after the step; a required secret
// the client does not have fails the build naming it.
#[test]
fn secrets_reach_run_through_the_session_and_stay_out_of_the_image() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let file_value = format!("file-secret-{}", unique("v"));
    let env_value = format!("env-secret-{}", unique("v"));
    std::fs::write(sb.path("tok"), &file_value).expect("write secret");
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}
RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /tok.sum
RUN --mount=type=secret,id=tok,target=/etc/app/token sha256sum /etc/app/token | cut -d' ' -f1 > /target.sum
RUN --mount=type=secret,id=envtok,env=MYTOK printf %s \"$MYTOK\" | sha256sum | cut -d' ' -f1 > /env.sum
RUN (test -e /run/secrets/tok && echo present || echo gone) > /after
",
            env.busybox()
        ),
    )
    .write(
        "Dockerfile.missing",
        &format!(
            "FROM {}\nRUN --mount=type=secret,id=needed,required true\n",
            env.busybox()
        ),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let secret_file = format!("id=tok,src={}", sb.path("tok").display());
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());
    let local = format!("type=local,dest={}", sb.path("fs").display());
    let mut cmd = sb.remote_command(
        &daemon,
        &[
            "--progress",
            "plain",
            "--secret",
            &secret_file,
            "--secret",
            "id=envtok,env=E2E_SECRET_VAR",
            "--output",
            &oci,
            "--output",
            &local,
        ],
    );
    cmd.env("E2E_SECRET_VAR", &env_value);
    let out = common::run(cmd);
    assert_ok(&out, "memobuild build --addr --secret");

    let read = |f: &str| std::fs::read_to_string(sb.path("fs").join(f)).expect("output file");
    assert_eq!(read("tok.sum").trim(), sha256_hex(file_value.as_bytes()));
    assert_eq!(read("target.sum").trim(), sha256_hex(file_value.as_bytes()));
    assert_eq!(read("env.sum").trim(), sha256_hex(env_value.as_bytes()));
    assert_eq!(read("after").trim(), "gone");
    assert!(!sb.path("fs/etc/app/token").exists());

    let layers = oci_layers(&sb.path("out.tar"));
    assert!(!layers.is_empty());
    for value in [&file_value, &env_value] {
        assert!(
            !layers.windows(value.len()).any(|w| w == value.as_bytes()),
            "a secret is in a layer"
        );
        assert!(!stderr(&out).contains(value.as_str()), "{}", stderr(&out));
    }

    // A required secret the client was not given.
    let dockerfile = sb.context().join("Dockerfile.missing");
    let out = sb.build_remote(
        &daemon,
        &[
            "--progress",
            "plain",
            "-f",
            &dockerfile.display().to_string(),
            "--secret",
            &secret_file,
        ],
    );
    assert!(!out.status.success(), "must fail:\n{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("needed"), "{line}");
    assert!(line.contains("required"), "{line}");
}

// Verifies: `--ssh default` (the agent at $SSH_AUTH_SOCK) and `--ssh keys=KEYFILE` (a key file
// the client loads into an agent of its own) are forwarded through the session to
// `RUN --mount=type=ssh` steps: inside, SSH_AUTH_SOCK names the mount and `ssh-add -l` lists
// exactly the forwarded agent's key.
#[test]
fn ssh_agents_are_forwarded_through_the_session() {
    let Some(env) = Env::get() else { return };
    if !common::ssh::have_ssh_tools() {
        return;
    }
    let sb = Sandbox::new();
    let agent = common::ssh::Agent::start(&sb);
    let (user_key, user_fp) = common::ssh::keygen(&sb, "id_user");
    agent.add(&user_key);
    let (file_key, file_fp) = common::ssh::keygen(&sb, "id_file");
    common::ssh::stage_ssh_add(&sb);
    let ssh_add = common::ssh::SSH_ADD;
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}
RUN --mount=type=bind,source=ssh,target=/ssh --mount=type=ssh echo \"$SSH_AUTH_SOCK\" > /sock && {ssh_add} -l > /default-keys
RUN --mount=type=bind,source=ssh,target=/ssh --mount=type=ssh,id=keys {ssh_add} -l > /file-keys
",
            env.busybox()
        ),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let keys = format!("keys={}", file_key.display());
    let local = format!("type=local,dest={}", sb.path("fs").display());
    let mut cmd = sb.remote_command(
        &daemon,
        &[
            "--progress",
            "plain",
            "--ssh",
            "default",
            "--ssh",
            &keys,
            "--output",
            &local,
        ],
    );
    cmd.env("SSH_AUTH_SOCK", &agent.socket);
    let out = common::run(cmd);
    assert_ok(&out, "memobuild build --addr --ssh");
    let read = |f: &str| std::fs::read_to_string(sb.path("fs").join(f)).expect("output file");
    assert_eq!(read("sock").trim(), "/run/buildkit/ssh_agent.0");
    let default_keys = read("default-keys");
    assert!(
        default_keys.contains(&user_fp) && !default_keys.contains(&file_fp),
        "{default_keys}"
    );
    let file_keys = read("file-keys");
    assert!(
        file_keys.contains(&file_fp) && !file_keys.contains(&user_fp),
        "{file_keys}"
    );
}
