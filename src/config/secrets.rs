//! Secrets from the environment: `X` or the file named by `X_FILE`.

use super::ConfigError;

/// A value read from the environment, with the name of the variable it came from (`X` or
/// `X_FILE`) for error messages.
pub(super) struct EnvValue {
    pub var: String,
    pub value: String,
}

/// Reads `var`, or the file named by `var_FILE` (one trailing newline stripped); both set is an
/// error, so that a stale variable cannot silently win.
pub(super) fn env_value(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<EnvValue>, ConfigError> {
    let file_var = format!("{var}_FILE");
    match (env(var), env(&file_var)) {
        (Some(_), Some(_)) => Err(ConfigError::Env {
            var: var.to_owned(),
            reason: format!("both {var} and {file_var} are set; set only one"),
        }),
        (Some(value), None) => Ok(Some(EnvValue {
            var: var.to_owned(),
            value,
        })),
        (None, Some(path)) => {
            let mut value = std::fs::read_to_string(&path).map_err(|e| ConfigError::Env {
                var: file_var.clone(),
                reason: format!("cannot read {path}: {e}"),
            })?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            Ok(Some(EnvValue {
                var: file_var,
                value,
            }))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_come_from_the_variable_or_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let file = file.display().to_string();

        let env = |name: &str| (name == "V").then(|| "direct".to_owned());
        let value = env_value(&env, "V").unwrap().unwrap();
        assert_eq!((value.var.as_str(), value.value.as_str()), ("V", "direct"));

        let env = |name: &str| (name == "V_FILE").then(|| file.clone());
        let value = env_value(&env, "V").unwrap().unwrap();
        assert_eq!(
            (value.var.as_str(), value.value.as_str()),
            ("V_FILE", "from-file")
        );

        let env = |_: &str| Some(file.clone());
        let err = env_value(&env, "V").err().unwrap().to_string();
        assert!(err.contains("both V and V_FILE"), "{err}");

        let env = |name: &str| (name == "V_FILE").then(|| "/nonexistent/secret".to_owned());
        let err = env_value(&env, "V").err().unwrap().to_string();
        assert!(err.starts_with("environment variable V_FILE:"), "{err}");

        assert!(env_value(&|_: &str| None, "V").unwrap().is_none());
    }
}
