//! Reading a GGUF file: its metadata (model shape, tokenizer, chat template) and its tensors.
//! Every other module of the local teacher starts from a [`GgufFile`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::LocalError;

/// A GGUF file whose header (metadata and tensor index) has been read; tensors are read on
/// demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: std::io::BufReader<fs_err::File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, LocalError> {
        let file = fs_err::File::open(path)?;
        let mut reader = std::io::BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| LocalError::Gguf {
            path: path.to_path_buf(),
            message: format!("not a readable GGUF file: {e}"),
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> LocalError {
        LocalError::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn get(&self, key: &str) -> Result<&Value, LocalError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key `{key}` is missing")))
    }

    fn convert<T>(&self, key: &str, value: candle_core::Result<T>) -> Result<T, LocalError> {
        value.map_err(|e| self.error(format!("metadata key `{key}` has the wrong type: {e}")))
    }

    pub fn u32(&self, key: &str) -> Result<u32, LocalError> {
        let value = self.get(key)?;
        // Writers disagree on integer widths; accept any non-negative integer that fits.
        let wide = match value {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        wide.and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| self.error(format!("metadata key `{key}` is not a small integer")))
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, LocalError> {
        if self.content.metadata.contains_key(key) {
            self.u32(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn f32(&self, key: &str) -> Result<f32, LocalError> {
        let value = self.get(key)?;
        match value {
            Value::F64(v) => Ok(*v as f32),
            other => self.convert(key, other.to_f32()),
        }
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, LocalError> {
        if self.content.metadata.contains_key(key) {
            self.f32(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, LocalError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => self.convert(key, v.to_bool()).map(Some),
        }
    }

    pub fn string(&self, key: &str) -> Result<&str, LocalError> {
        let value = self.get(key)?;
        self.convert(key, value.to_string()).map(String::as_str)
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<&str>, LocalError> {
        if self.content.metadata.contains_key(key) {
            self.string(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn strings(&self, key: &str) -> Result<Vec<&str>, LocalError> {
        let values = self.convert(key, self.get(key)?.to_vec())?;
        values
            .iter()
            .map(|v| self.convert(key, v.to_string()).map(String::as_str))
            .collect()
    }

    pub fn i32s(&self, key: &str) -> Result<Vec<i32>, LocalError> {
        let values = self.convert(key, self.get(key)?.to_vec())?;
        values
            .iter()
            .map(|v| self.convert(key, v.to_i32()))
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor, LocalError> {
        if !self.has_tensor(name) {
            return Err(self.error(format!("tensor `{name}` is missing")));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| LocalError::Gguf {
                path: self.path.clone(),
                message: format!("cannot read tensor `{name}`: {e}"),
            })
    }
}
