//! Pictures of the eval stage's metrics as standalone SVG: the confusion heat map and the
//! reliability diagram, written beside `metrics.json` and embedded by the HTML report.
//!
//! The SVG is written directly rather than through a plotting crate: plotters lays out text
//! with system fonts (font-kit), which servers and CI machines often lack, and would then fail;
//! an SVG `<text>` element leaves fonts to the viewer, which also renders Chinese intent names.
//! Both pictures are grids of rectangles and labels, a few lines each.

use std::fmt::Write;

use crate::metrics::Metrics;

const CELL: f64 = 44.0;
const FONT: &str = "font-family=\"system-ui, sans-serif\"";

/// The confusion matrix as an SVG heat map: rows are gold intents, columns predicted intents.
/// Each cell shows its count; its colour is the share of its row (recall per gold intent), so
/// large and small intents read on one scale.
pub fn confusion_svg(metrics: &Metrics) -> String {
    let n = metrics.labels.len();
    let label_width = 12.0
        + 7.5
            * metrics
                .labels
                .iter()
                .map(|l| display_width(l))
                .max()
                .unwrap_or(1) as f64;
    let (left, top) = (label_width + 24.0, label_width + 24.0);
    let (width, height) = (left + CELL * n as f64 + 16.0, top + CELL * n as f64 + 16.0);

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" {FONT} font-size=\"12\">\n\
         <title>Confusion matrix: rows gold intent, columns predicted intent</title>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"14\" text-anchor=\"middle\" font-weight=\"bold\">predicted</text>",
        left + CELL * n as f64 / 2.0
    );
    let _ = writeln!(
        svg,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\" \
         font-weight=\"bold\">gold</text>",
        top + CELL * n as f64 / 2.0
    );
    for (i, label) in metrics.labels.iter().enumerate() {
        let label = escape(label);
        let centre = CELL * i as f64 + CELL / 2.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{label}</text>",
            left - 6.0,
            top + centre
        );
        let _ = writeln!(
            svg,
            "<text transform=\"translate({:.1} {:.1}) rotate(-60)\" dominant-baseline=\"middle\">{label}</text>",
            left + centre,
            top - 6.0
        );
    }
    for (g, row) in metrics.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let (x, y) = (left + CELL * p as f64, top + CELL * g as f64);
            let fill = if g == p { blue(share) } else { red(share) };
            let ink = if share > 0.55 { "white" } else { "#222" };
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{CELL}\" height=\"{CELL}\" fill=\"{fill}\" \
                 stroke=\"#ddd\"><title>gold {} predicted {}: {count} ({:.0}% of the row)</title></rect>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" dominant-baseline=\"middle\" \
                 fill=\"{ink}\">{count}</text>",
                escape(&metrics.labels[g]),
                escape(&metrics.labels[p]),
                share * 100.0,
                x + CELL / 2.0,
                y + CELL / 2.0,
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The reliability diagram: per confidence bin, the share right against the mean confidence;
/// a calibrated classifier sits on the diagonal. `None` without calibration data.
pub fn reliability_svg(metrics: &Metrics) -> Option<String> {
    let calibration = metrics.calibration.as_ref()?;
    let (left, top, size) = (48.0, 28.0, 240.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         {FONT} font-size=\"12\">\n<title>Reliability diagram, ECE {ece:.3}</title>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{cx}\" y=\"16\" text-anchor=\"middle\" font-weight=\"bold\">ECE {ece:.3}</text>\n\
         <rect x=\"{left}\" y=\"{top}\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#888\"/>\n\
         <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{top}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{cx}\" y=\"{xl}\" text-anchor=\"middle\">confidence</text>\n\
         <text transform=\"translate(16 {cy}) rotate(-90)\" text-anchor=\"middle\">accuracy</text>\n",
        w = left + size + 16.0,
        h = top + size + 40.0,
        ece = calibration.ece,
        cx = left + size / 2.0,
        cy = top + size / 2.0,
        bottom = top + size,
        right = left + size,
        xl = top + size + 32.0,
    );
    for tick in [0.0, 0.5, 1.0] {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{tick}</text>",
            left + tick * size,
            top + size + 16.0,
            left - 6.0,
            top + size - tick * size,
        );
    }
    let bar = size / calibration.bins.len() as f64;
    for bin in &calibration.bins {
        let (Some(accuracy), Some(confidence)) = (bin.accuracy, bin.confidence) else {
            continue;
        };
        let x = left + bin.lower * size;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"white\">\
             <title>{:.1}-{:.1}: {} messages, confidence {confidence:.3}, accuracy {accuracy:.3}</title></rect>",
            top + size - accuracy * size,
            bar,
            accuracy * size,
            blue(0.6),
            bin.lower,
            bin.upper,
            bin.count,
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

/// White to dark blue.
fn blue(share: f64) -> String {
    mix((255.0, 255.0, 255.0), (8.0, 69.0, 148.0), share)
}

/// White to dark red, for the mistakes.
fn red(share: f64) -> String {
    mix((255.0, 255.0, 255.0), (165.0, 15.0, 21.0), share)
}

fn mix(from: (f64, f64, f64), to: (f64, f64, f64), t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let channel = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        channel(from.0, to.0),
        channel(from.1, to.1),
        channel(from.2, to.2)
    )
}

/// Columns a label takes, counting wide (CJK) characters twice.
fn display_width(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        let labels = vec!["退货".to_string(), "a<b".to_string()];
        Metrics::compute(&[0, 0, 1], &[0, 1, 1], Some(&[0.9, 0.6, 0.8]), &labels).unwrap()
    }

    #[test]
    fn confusion_svg_has_a_cell_per_pair_and_escapes_names() {
        let svg = confusion_svg(&metrics());
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert!(svg.contains("a&lt;b"));
        assert!(!svg.contains("a<b"));
        assert!(svg.contains(">退货</text>"));
        // Row `退货` is one right, one wrong: half blue on the diagonal, half red beside it.
        assert!(svg.contains(&format!("fill=\"{}\"", blue(0.5))));
        assert!(svg.contains(&format!("fill=\"{}\"", red(0.5))));
    }

    #[test]
    fn reliability_svg_needs_probabilities() {
        let svg = reliability_svg(&metrics()).unwrap();
        assert!(svg.contains("ECE"));
        let labels = vec!["a".to_string(), "b".to_string()];
        let plain = Metrics::compute(&[0], &[0], None, &labels).unwrap();
        assert!(reliability_svg(&plain).is_none());
    }
}
