//! The one place kubestrap reads its process environment (see
//! [`crate::env`]): once, when a command starts.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::driver::docker::DockerEnv;
use crate::env::Environment;

/// A variable's value, unless it is unset or empty (an empty variable
/// counts as unset everywhere in kubestrap).
fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn var_os(k: &str) -> Option<OsString> {
    std::env::var_os(k).filter(|v| !v.is_empty())
}

/// What this process's environment says.
pub fn read() -> Environment {
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    let docker = DockerEnv {
        docker_host: var("DOCKER_HOST"),
        docker_context: var("DOCKER_CONTEXT"),
        config_dir: var("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().join(".docker"))),
        runtime_dir: var("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from(format!("/run/user/{uid}")))),
        uid,
        ..DockerEnv::default()
    };
    Environment {
        kubeconfig: var_os("KUBECONFIG"),
        home: var_os("HOME").map(PathBuf::from),
        channel_url: var("KUBESTRAP_CHANNEL_URL"),
        config_file: directories::ProjectDirs::from("dev", "kubestrap", "kubestrap")
            .map(|d| d.config_dir().join("config.toml")),
        docker,
        path: std::env::var_os("PATH").unwrap_or_default(),
        vars: std::env::vars_os().collect(),
    }
}

/// The home `KUBESTRAP_HOME` names, else the platform's data directory
/// (`$XDG_DATA_HOME/kubestrap`).
pub fn home_dir() -> Option<PathBuf> {
    var_os("KUBESTRAP_HOME")
        .map(PathBuf::from)
        .or_else(|| directories::ProjectDirs::from("dev", "kubestrap", "kubestrap").map(|d| d.data_dir().to_path_buf()))
}

/// The test-only kill point (`KUBESTRAP_TEST_KILL_AT`, `KUBESTRAP_TEST_KILL_LOG`).
pub fn kill_point() -> Option<(String, Option<OsString>)> {
    var("KUBESTRAP_TEST_KILL_AT").map(|at| (at, var_os("KUBESTRAP_TEST_KILL_LOG")))
}
