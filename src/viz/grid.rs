//! PNG image grids: rows of tiles, each an image (grey or RGB, upscaled by nearest neighbour so
//! 28x28 images stay legible) with an optional discrepancy map drawn as a red tint and an optional
//! coloured border (the paper's red boxes: adversarial images whose target class is the neuron's
//! class). No text is drawn (that would need a font); the JSON next to each PNG says what each
//! tile is.

use std::path::Path;

use image::{ImageEncoder, Rgb, RgbImage};

use crate::error::{Error, Result};

/// One image of a grid.
#[derive(Clone, Debug)]
pub struct Tile {
    /// u8 pixels, C x H x W (C = 1 grey or 3 RGB).
    pub pixels: Vec<u8>,
    /// (C, H, W).
    pub shape: (usize, usize, usize),
    /// Discrepancy map, H x W values in [0, 1]; drawn as a red tint of strength `tint * m`.
    pub heat: Option<Vec<f32>>,
    /// Border colour (None: background).
    pub border: Option<[u8; 3]>,
}

impl Tile {
    /// A tile from f32 pixels on the 0..255 scale (rounded and clamped).
    pub fn from_f32(pixels: &[f32], shape: (usize, usize, usize)) -> Tile {
        Tile {
            pixels: pixels
                .iter()
                .map(|&v| v.round().clamp(0.0, 255.0) as u8)
                .collect(),
            shape,
            heat: None,
            border: None,
        }
    }
}

/// Layout of a grid.
#[derive(Clone, Copy, Debug)]
pub struct GridStyle {
    /// Upscaling factor of every image (nearest neighbour).
    pub scale: usize,
    /// Border width around each tile, in output pixels.
    pub border: usize,
    /// Gap between tiles and between rows.
    pub gap: usize,
    /// Strength of the discrepancy tint at m = 1 (0 = invisible, 1 = pure red).
    pub tint: f32,
}

impl GridStyle {
    /// A style that upscales images of side `side` to about 96 pixels.
    pub fn for_side(side: usize) -> GridStyle {
        GridStyle {
            scale: (96 / side.max(1)).max(1),
            border: 3,
            gap: 4,
            tint: 0.6,
        }
    }
}

const BACKGROUND: [u8; 3] = [255, 255, 255];

fn check_tile(t: &Tile, r: usize, i: usize) -> Result<()> {
    let (c, h, w) = t.shape;
    let what = |msg: String| Error::shape("image grid", format!("row {r} tile {i}: {msg}"));
    if c != 1 && c != 3 {
        return Err(what(format!("{c} channels (1 or 3 supported)")));
    }
    if h == 0 || w == 0 || t.pixels.len() != c * h * w {
        return Err(what(format!(
            "{} pixels for shape ({c}, {h}, {w})",
            t.pixels.len()
        )));
    }
    if let Some(m) = &t.heat {
        if m.len() != h * w {
            return Err(what(format!(
                "heat map has {} values for {h} x {w}",
                m.len()
            )));
        }
    }
    Ok(())
}

/// Render `rows` (each a list of tiles; rows may differ in length, all tiles the same (H, W)
/// after scaling is not required: each cell is as large as the largest tile).
pub fn grid_image(rows: &[Vec<Tile>], style: &GridStyle) -> Result<RgbImage> {
    let mut cell_h = 0usize;
    let mut cell_w = 0usize;
    for (r, row) in rows.iter().enumerate() {
        for (i, t) in row.iter().enumerate() {
            check_tile(t, r, i)?;
            cell_h = cell_h.max(t.shape.1 * style.scale.max(1));
            cell_w = cell_w.max(t.shape.2 * style.scale.max(1));
        }
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    if rows.is_empty() || cols == 0 {
        return Err(Error::InvalidArg("image grid: no tiles to draw".into()));
    }
    let b = style.border;
    let full_w = cell_w + 2 * b;
    let full_h = cell_h + 2 * b;
    let width = style.gap + cols * (full_w + style.gap);
    let height = style.gap + rows.len() * (full_h + style.gap);
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb(BACKGROUND));
    let s = style.scale.max(1);
    let tint = style.tint.clamp(0.0, 1.0);
    for (r, row) in rows.iter().enumerate() {
        for (i, t) in row.iter().enumerate() {
            let x0 = style.gap + i * (full_w + style.gap);
            let y0 = style.gap + r * (full_h + style.gap);
            if let Some(col) = t.border {
                for y in y0..y0 + full_h {
                    for x in x0..x0 + full_w {
                        img.put_pixel(x as u32, y as u32, Rgb(col));
                    }
                }
            }
            let (c, h, w) = t.shape;
            for y in 0..h {
                for x in 0..w {
                    let p = y * w + x;
                    let mut rgb = if c == 1 {
                        let g = t.pixels[p] as f32;
                        [g, g, g]
                    } else {
                        [
                            t.pixels[p] as f32,
                            t.pixels[h * w + p] as f32,
                            t.pixels[2 * h * w + p] as f32,
                        ]
                    };
                    if let Some(m) = &t.heat {
                        let a = tint * m[p].clamp(0.0, 1.0);
                        rgb[0] = (1.0 - a) * rgb[0] + a * 255.0;
                        rgb[1] *= 1.0 - a;
                        rgb[2] *= 1.0 - a;
                    }
                    let px = Rgb(rgb.map(|v| v.round().clamp(0.0, 255.0) as u8));
                    for dy in 0..s {
                        for dx in 0..s {
                            img.put_pixel(
                                (x0 + b + x * s + dx) as u32,
                                (y0 + b + y * s + dy) as u32,
                                px,
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(img)
}

/// Write an RGB image as PNG, atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    crate::io::write_atomic(path, |w| {
        image::codecs::png::PngEncoder::new(w)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn grid_places_tiles_tints_and_borders() {
        let mut rng = Rng::new(7);
        let (h, w) = (5, 3);
        let px: Vec<u8> = (0..h * w).map(|_| (rng.next_u64() % 200) as u8).collect();
        let mut heat = vec![0.0f32; h * w];
        heat[4] = 1.0;
        let t = Tile {
            pixels: px.clone(),
            shape: (1, h, w),
            heat: Some(heat),
            border: Some([255, 0, 0]),
        };
        let plain = Tile {
            pixels: px.clone(),
            shape: (1, h, w),
            heat: None,
            border: None,
        };
        let style = GridStyle {
            scale: 2,
            border: 1,
            gap: 2,
            tint: 1.0,
        };
        let img = grid_image(&[vec![t, plain.clone()], vec![plain]], &style).unwrap();
        let (fw, fh) = (w * 2 + 2, h * 2 + 2);
        assert_eq!(img.width() as usize, 2 + 2 * (fw + 2));
        assert_eq!(img.height() as usize, 2 + 2 * (fh + 2));
        // Border pixel of the first tile is red, of the second the background.
        assert_eq!(img.get_pixel(2, 2).0, [255, 0, 0]);
        assert_eq!(img.get_pixel((2 + fw + 2) as u32, 2).0, BACKGROUND);
        // Pixel 4 = (y 1, x 1) fully tinted; pixel 0 untouched grey.
        let at = |tile_x: usize, y: usize, x: usize| {
            img.get_pixel((tile_x + 1 + 2 * x) as u32, (2 + 1 + 2 * y) as u32)
                .0
        };
        assert_eq!(at(2, 1, 1), [255, 0, 0]);
        assert_eq!(at(2, 0, 0), [px[0], px[0], px[0]]);
        assert_eq!(at(2 + fw + 2, 1, 1), [px[4], px[4], px[4]]);
    }

    #[test]
    fn grid_rejects_bad_tiles() {
        let bad = Tile {
            pixels: vec![0; 5],
            shape: (1, 2, 3),
            heat: None,
            border: None,
        };
        assert!(grid_image(&[vec![bad]], &GridStyle::for_side(2)).is_err());
        assert!(grid_image(&[], &GridStyle::for_side(2)).is_err());
    }
}
