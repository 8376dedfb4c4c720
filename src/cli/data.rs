//! `advlens data ...`: import datasets into split files and inspect them.
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{emit, Ctx};
use crate::data::folder::{import_folder, FolderOptions};
use crate::data::idx::{import_fashion_mnist, DEFAULT_FASHION_MNIST_DIR};
use crate::data::Dataset;
use crate::error::Result;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Convert gzipped IDX files (Fashion-MNIST) to OUT/train.safetensors and OUT/test.safetensors.
    #[command(
        after_help = "Example:\n  advlens data import-idx --out data/fmnist\n  advlens data import-idx --src /usr/share/datasets/fashion-mnist --out /tmp/fm --limit-train 1000 --limit-test 500"
    )]
    ImportIdx(ImportIdxArgs),
    /// Convert an ImageNet-style folder (SRC/<wnid>/*.JPEG|png) to one split file: RGB, resize
    /// the shorter side, center crop.
    #[command(
        after_help = "Example:\n  advlens data import-folder --src ILSVRC2012/val --out data/imagenet/val.safetensors --size 224 --resize 256"
    )]
    ImportFolder(ImportFolderArgs),
    /// Print shapes, dtypes, layout, classes and per-class counts of a split file.
    #[command(after_help = "Example:\n  advlens data info data/fmnist/train.safetensors --json")]
    Info(InfoArgs),
}

#[derive(Args, Debug)]
pub struct ImportIdxArgs {
    /// Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (Debian: dataset-fashion-mnist).
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    pub src: PathBuf,
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep only the first N training images (the whole file is still checked).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Keep only the first N test images (the whole file is still checked).
    #[arg(long)]
    pub limit_test: Option<usize>,
}

#[derive(Args, Debug)]
pub struct ImportFolderArgs {
    /// Folder with one subfolder per class (named by wnid); classes are sorted by name.
    #[arg(long)]
    pub src: PathBuf,
    /// Output split file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Side of the square center crop.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Resize the shorter side to this before cropping.
    #[arg(long, default_value_t = 256)]
    pub resize: u32,
    /// Skip files that cannot be decoded (warn and count) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A split file (.safetensors).
    pub file: PathBuf,
}

#[derive(serde::Serialize)]
struct TensorDesc {
    dtype: String,
    shape: Vec<usize>,
}

#[derive(serde::Serialize)]
struct ClassCount {
    label: usize,
    name: String,
    count: usize,
}

#[derive(serde::Serialize)]
struct InfoOut {
    file: PathBuf,
    images: TensorDesc,
    labels: TensorDesc,
    layout: &'static str,
    layout_assumed: bool,
    len: usize,
    channels: usize,
    height: usize,
    width: usize,
    num_classes: usize,
    source: Option<String>,
    classes: Vec<ClassCount>,
}

pub fn run(ctx: &Ctx, c: &DataCommand) -> Result<()> {
    match c {
        DataCommand::ImportIdx(a) => {
            let _lock = super::claim_out_dir(&a.out, &[("--src", &a.src)])?;
            let s = import_fashion_mnist(&a.src, &a.out, a.limit_train, a.limit_test)?;
            emit(ctx, &s, || {
                s.iter()
                    .map(|x| {
                        format!(
                            "{}: wrote {} of {} images ({}x{}) to {}",
                            x.split,
                            x.written,
                            x.total_in_file,
                            x.rows,
                            x.cols,
                            x.out.display()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        DataCommand::ImportFolder(a) => {
            super::guard_out(&a.out, &[("--src", &a.src)])?;
            let opts = FolderOptions {
                size: a.size,
                resize: a.resize,
                skip_bad: a.skip_bad,
            };
            let s = import_folder(&a.src, &a.out, &opts)?;
            emit(ctx, &s, || {
                let mut t = format!(
                    "wrote {} images (3x{}x{}) of {} classes to {}",
                    s.images,
                    s.size,
                    s.size,
                    s.classes.len(),
                    s.out.display()
                );
                if !s.skipped.is_empty() {
                    t += &format!("\nskipped {} undecodable files", s.skipped.len());
                }
                if s.ignored_files > 0 {
                    t += &format!(
                        "\nignored {} files that are not jpg/jpeg/png",
                        s.ignored_files
                    );
                }
                t
            });
            Ok(())
        }
        DataCommand::Info(a) => {
            let d = Dataset::open(&a.file)?;
            let (ch, h, w) = d.shape();
            let img_shape = match d.layout() {
                crate::data::Layout::Nchw => vec![d.len(), ch, h, w],
                crate::data::Layout::Nhwc => vec![d.len(), h, w, ch],
            };
            let info = InfoOut {
                file: a.file.clone(),
                images: TensorDesc {
                    dtype: "U8".into(),
                    shape: img_shape,
                },
                labels: TensorDesc {
                    dtype: format!("{:?}", d.labels_dtype()),
                    shape: vec![d.len()],
                },
                layout: d.layout().as_str(),
                layout_assumed: d.layout_assumed(),
                len: d.len(),
                channels: ch,
                height: h,
                width: w,
                num_classes: d.num_classes(),
                source: d.source().map(str::to_string),
                classes: d
                    .classes()
                    .iter()
                    .zip(d.class_counts())
                    .enumerate()
                    .map(|(label, (name, count))| ClassCount {
                        label,
                        name: name.clone(),
                        count,
                    })
                    .collect(),
            };
            emit(ctx, &info, || info_text(&info));
            Ok(())
        }
    }
}

fn info_text(i: &InfoOut) -> String {
    let mut t = format!("file:    {}\n", i.file.display());
    t += &format!(
        "images:  {} {:?} layout {}{}\n",
        i.images.dtype,
        i.images.shape,
        i.layout,
        if i.layout_assumed {
            " (assumed: no layout metadata)"
        } else {
            ""
        }
    );
    t += &format!("labels:  {} {:?}\n", i.labels.dtype, i.labels.shape);
    if let Some(s) = &i.source {
        t += &format!("source:  {s}\n");
    }
    t += &format!("classes: {}\n", i.num_classes);
    let width = i.classes.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &i.classes {
        t += &format!(
            "  {:>4}  {:<width$}  {}\n",
            c.label,
            c.name,
            c.count,
            width = width
        );
    }
    t.trim_end().to_string()
}
