//! The run report: one self-contained HTML file (plots inlined as SVG, no scripts, no external
//! resources) that `run` writes last, from what every stage left in the run folder.

use std::fmt::Write as _;

/// A report: a title, key figures at the top, then one section per stage.
#[derive(Debug, Default)]
pub struct Report {
    pub title: String,
    pub subtitle: String,
    /// Headline numbers, shown as a two-column table at the top.
    pub summary: Vec<(String, String)>,
    /// Warnings shown in a box under the summary (e.g. "evaluated on synthetic data").
    pub notes: Vec<String>,
    pub sections: Vec<Section>,
}

#[derive(Debug, Default)]
pub struct Section {
    pub title: String,
    pub text: Option<String>,
    pub figures: Vec<Figure>,
    pub tables: Vec<Table>,
}

#[derive(Debug)]
pub struct Figure {
    pub caption: String,
    /// An SVG document; its XML prologue is dropped when inlined.
    pub svg: String,
}

#[derive(Debug, Default)]
pub struct Table {
    pub caption: Option<String>,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;\
padding:0 1em;color:#222}h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;\
text-align:left}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.notes{background:#fff7e0;border:1px solid #e8c66a;padding:.5em 1em}figure{margin:1em 0}\
figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}\
section{border-top:1px solid #ddd;margin-top:2em}";

impl Report {
    /// Renders the report as one HTML document.
    pub fn to_html(&self) -> String {
        let mut html = String::with_capacity(64 * 1024);
        let title = escape(&self.title);
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\
             <p class=\"sub\">{}</p>\n",
            escape(&self.subtitle)
        );
        if !self.summary.is_empty() {
            let rows = self
                .summary
                .iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .collect();
            render_table(
                &mut html,
                &Table {
                    caption: None,
                    headers: vec![],
                    rows,
                },
            );
        }
        if !self.notes.is_empty() {
            html.push_str("<div class=\"notes\"><ul>");
            for note in &self.notes {
                let _ = write!(html, "<li>{}</li>", escape(note));
            }
            html.push_str("</ul></div>\n");
        }
        for section in &self.sections {
            render_section(&mut html, section);
        }
        html.push_str("</body></html>\n");
        html
    }
}

fn render_section(html: &mut String, section: &Section) {
    let _ = writeln!(html, "<section><h2>{}</h2>", escape(&section.title));
    if let Some(text) = &section.text {
        let _ = writeln!(html, "<p>{}</p>", escape(text));
    }
    for figure in &section.figures {
        let _ = writeln!(
            html,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            inline_svg(&figure.svg),
            escape(&figure.caption)
        );
    }
    for table in &section.tables {
        render_table(html, table);
    }
    html.push_str("</section>\n");
}

fn render_table(html: &mut String, table: &Table) {
    html.push_str("<table>");
    if let Some(caption) = &table.caption {
        let _ = write!(html, "<caption>{}</caption>", escape(caption));
    }
    if !table.headers.is_empty() {
        html.push_str("<tr>");
        for header in &table.headers {
            let _ = write!(html, "<th>{}</th>", escape(header));
        }
        html.push_str("</tr>");
    }
    for row in &table.rows {
        html.push_str("<tr>");
        for cell in row {
            let class = if looks_numeric(cell) {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(html, "<td{class}>{}</td>", escape(cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>\n");
}

fn looks_numeric(cell: &str) -> bool {
    let cell = cell
        .trim_start_matches(['+', '-', '$'])
        .trim_end_matches(['%', 's']);
    !cell.is_empty()
        && cell
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
}

/// Drops the XML prologue and doctype so the SVG can sit inside HTML.
fn inline_svg(svg: &str) -> &str {
    svg.find("<svg").map_or("", |start| &svg[start..])
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A grouped bar chart as SVG: one group per category, one bar per series.
pub fn bar_chart_svg(
    title: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    y_label: &str,
) -> anyhow::Result<String> {
    use plotters::prelude::*;

    let mut svg = String::new();
    {
        let width = (160 + categories.len() as u32 * 70).clamp(480, 1100);
        let root = SVGBackend::with_string(&mut svg, (width, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = series
            .iter()
            .flat_map(|(_, values)| values.iter().copied())
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.1;
        let groups = categories.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(if categories.iter().any(|c| c.chars().count() > 8) {
                70
            } else {
                35
            })
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..groups as f64 - 0.5, 0.0..max)?;
        let labels: Vec<String> = categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .draw()?;
        let width_each = 0.8 / series.len().max(1) as f64;
        for (s, (name, values)) in series.iter().enumerate() {
            let color = Palette99::pick(s).to_rgba();
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 - 0.4 + s as f64 * width_each;
                    Rectangle::new([(x0, 0.0), (x0 + width_each * 0.95, v)], color.filled())
                }))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_self_contained_and_escaped() {
        let svg = bar_chart_svg(
            "F1",
            &["退货".into(), "other".into()],
            &[
                ("student".into(), vec![0.9, 0.8]),
                ("teacher".into(), vec![0.7, 0.6]),
            ],
            "F1",
        )
        .unwrap();
        let report = Report {
            title: "run <x>".into(),
            subtitle: "task & more".into(),
            summary: vec![("macro-F1".into(), "0.91".into())],
            notes: vec!["evaluated on synthetic data".into()],
            sections: vec![Section {
                title: "Evaluation".into(),
                text: None,
                figures: vec![Figure {
                    caption: "per intent".into(),
                    svg,
                }],
                tables: vec![],
            }],
        };
        let html = report.to_html();
        assert!(html.contains("run &lt;x&gt;"));
        assert!(html.contains("task &amp; more"));
        assert!(html.contains("<svg"));
        assert!(!html.contains("<?xml"));
        assert!(!html.contains("<script"));
        assert!(html.contains("<td class=\"n\">0.91</td>"));
    }

    /// Renders a report in headless Chromium, where installed: the page must load, show its
    /// figures and log no console errors.
    #[test]
    fn renders_in_headless_chromium_without_console_errors() {
        let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|b| {
                std::process::Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
        else {
            // CI installs Chromium and sets this, so the check cannot pass by skipping there.
            assert!(
                std::env::var_os("PROMPT2LORA_REQUIRE_CHROMIUM").is_none(),
                "PROMPT2LORA_REQUIRE_CHROMIUM is set but no Chromium was found"
            );
            eprintln!("skipped: no Chromium on this machine");
            return;
        };
        let svg = bar_chart_svg(
            "F1",
            &["a".into(), "b".into()],
            &[("s".into(), vec![0.5, 1.0])],
            "F1",
        )
        .unwrap();
        let report = Report {
            title: "render check".into(),
            sections: vec![Section {
                title: "Figures".into(),
                figures: vec![Figure {
                    caption: "chart".into(),
                    svg,
                }],
                ..Section::default()
            }],
            ..Report::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("report.html");
        fs_err::write(&page, report.to_html()).unwrap();
        let out = std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(
            dom.contains("render check") && dom.contains("<svg"),
            "{dom}"
        );
        let console_errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CONSOLE") && l.contains("ERROR"))
            .collect();
        assert!(console_errors.is_empty(), "{console_errors:?}");
    }
}
