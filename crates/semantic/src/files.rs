//! Reading and sanity-checking model files, so that a missing or corrupt file
//! is reported by name before a library deep inside gives a vaguer error.

use std::path::{Path, PathBuf};

use crate::error::LoadError;

/// Checks that `dir` is a directory.
pub(crate) fn check_dir(dir: &Path) -> Result<(), LoadError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(LoadError::MissingDir {
            path: dir.to_path_buf(),
        })
    }
}

/// Reads `dir/name` whole.
pub(crate) fn read(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), LoadError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(LoadError::MissingFile { path }),
        Err(source) => Err(LoadError::Read { path, source }),
    }
}

/// Builds a [`LoadError::Invalid`].
pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Validates the framing of a safetensors file: an 8-byte little-endian header
/// length, a JSON header whose tensors' `data_offsets` all lie inside the file.
/// Catches truncated downloads and non-safetensors files with a precise message.
pub(crate) fn check_safetensors(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(invalid(
            path,
            format!(
                "file is {} bytes, too short for a safetensors header",
                bytes.len()
            ),
        ));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    let header_len = usize::try_from(header_len)
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or_else(|| {
            invalid(
                path,
                format!(
                    "not a safetensors file or truncated: header length {header_len} exceeds the {} bytes that follow",
                    rest.len()
                ),
            )
        })?;
    let (header, data) = rest.split_at(header_len);
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| {
            invalid(
                path,
                format!("safetensors header is not a JSON object: {e}"),
            )
        })?;
    let mut needed = 0_u64;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(serde_json::Value::as_array)
            .and_then(|a| a.get(1))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| invalid(path, format!("tensor {name:?} has no valid data_offsets")))?;
        needed = needed.max(end);
    }
    if needed > data.len() as u64 {
        return Err(invalid(
            path,
            format!(
                "file is truncated: tensors need {needed} bytes of data, only {} present",
                data.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor_file(header: &str, data_len: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0_u8, data_len));
        out
    }

    #[test]
    fn accepts_well_framed_file() {
        let f = tensor_file(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        );
        check_safetensors(Path::new("m"), &f).unwrap();
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let f = tensor_file(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            4,
        );
        let e = check_safetensors(Path::new("m"), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = check_safetensors(Path::new("m"), b"hello")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        let e = check_safetensors(Path::new("m"), b"garbage garbage garbage").unwrap_err();
        assert!(e.to_string().contains("header length"), "{e}");
        let f = tensor_file("not json", 0);
        let e = check_safetensors(Path::new("m"), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a JSON object"), "{e}");
    }
}
