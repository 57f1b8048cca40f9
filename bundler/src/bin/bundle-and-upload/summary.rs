//! What the user (or CI) sees at the end of an upload: text, or one JSON object.

use dropship_bundler::bundle::PreparedBundle;
use dropship_operator::wait::WaitReport;

/// What the user (or CI) sees at the end.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub app: String,
    pub env: String,
    pub commit: String,
    pub branch: String,
    pub dirty: bool,
    pub files: u64,
    pub unpacked_bytes: u64,
    pub bytes: u64,
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub dry_run: bool,
    /// The followed deploy, with `--wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<WaitReport>,
}

impl Summary {
    pub fn new(p: &PreparedBundle, sha256: String, bytes: u64) -> Self {
        Self {
            app: p.manifest.app.clone(),
            env: p.config.key.env().to_string(),
            commit: p.head.commit.clone(),
            branch: p.branch.clone(),
            dirty: p.dirty,
            files: p.manifest.files,
            unpacked_bytes: p.manifest.bytes,
            bytes,
            sha256,
            bucket: None,
            key: None,
            version_id: None,
            multipart: None,
            output: None,
            dry_run: false,
            deploy: None,
        }
    }

    pub fn with_output(mut self, output: &std::path::Path) -> Self {
        self.output = Some(output.display().to_string());
        self
    }

    pub fn print(&self, json: bool, seconds: f64) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("summary serialises")
            );
            return;
        }
        let what = if self.output.is_some() {
            "Bundled"
        } else if self.dry_run {
            "Dry run (nothing uploaded)"
        } else {
            "Uploaded"
        };
        println!("{what} {}/{} in {seconds:.2}s", self.app, self.env);
        if let (Some(bucket), Some(key)) = (&self.bucket, &self.key) {
            println!("  key      s3://{bucket}/{key}");
        }
        if let Some(v) = &self.version_id {
            println!("  version  {v}");
        }
        if let Some(o) = &self.output {
            println!("  file     {o}");
        }
        println!(
            "  size     {} bytes ({} entries, {} bytes unpacked)",
            self.bytes, self.files, self.unpacked_bytes
        );
        println!("  sha256   {}", self.sha256);
        let dirty = if self.dirty { ", dirty" } else { "" };
        println!("  commit   {} ({}{dirty})", self.commit, self.branch);
    }
}
