"""A report document built block by block and written as Markdown and as one self-contained HTML file."""

from __future__ import annotations

import base64
import html

# ----------------------------------------------------------------------------------------------
# Blocks -> Markdown / HTML
# ----------------------------------------------------------------------------------------------


class _Doc:
    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: list[str], rows: list[list[str]], right: set[int] | None = None,
              paper: bool = True) -> None:
        """A table; ``paper=False`` drops the columns whose header starts with "paper"."""
        if right is None:
            right = set(range(1, len(head)))
        if not paper:
            keep = [i for i, h in enumerate(head) if not h.startswith("paper")]
            right = {keep.index(i) for i in right if i in keep}
            head = [head[i] for i in keep]
            rows = [[r[i] for i in keep] for r in rows]
        self.blocks.append(("table", head, rows, right))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("fig", name, png, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                _, head, rows, right = b
                out.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
                out.append("| " + " | ".join("---:" if i in right else "---" for i in range(len(head))) + " |")
                for r in rows:
                    out.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
                out.append("")
            elif b[0] == "fig":
                _, name, _, caption = b
                out += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self, title: str) -> str:
        parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>"]
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{_inline_html(b[1])}</p>")
            elif b[0] == "table":
                _, head, rows, right = b
                cls = [" ".join(c for c in ("r" if i in right else "", "paper" if h.startswith("paper") else "") if c)
                       for i, h in enumerate(head)]
                attr = [f' class="{c}"' if c else "" for c in cls]
                t = ['<div class="tw"><table>', "<thead><tr>"]
                t += [f"<th{attr[i]}>{html.escape(h)}</th>" for i, h in enumerate(head)]
                t.append("</tr></thead><tbody>")
                for r in rows:
                    t.append("<tr>" + "".join(f"<td{attr[i]}>{_inline_html(c)}</td>" for i, c in enumerate(r)) + "</tr>")
                t.append("</tbody></table></div>")
                parts.append("".join(t))
            elif b[0] == "fig":
                _, name, png, caption = b
                data = base64.b64encode(png).decode("ascii")
                parts.append(f'<figure id="{html.escape(name)}"><img alt="{html.escape(caption)}" '
                             f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption>'
                             "</figure>")
        parts += ["</main>", "</body>", "</html>"]
        return "\n".join(parts) + "\n"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#fafafa;color:#222;
line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 64px;background:#fff}
h1{font-size:1.7em;margin-top:0.2em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin-top:1.6em}
.tw{overflow-x:auto;margin:0.8em 0}
table{border-collapse:collapse;font-size:0.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:4px 8px;white-space:nowrap}th{background:#f0f3f6;text-align:left}
td.r,th.r{text-align:right}tbody tr:nth-child(even){background:#fafbfc}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.88em;color:#555;margin-top:4px}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;font-size:0.92em}
th.paper{background:#f7efe0}td.paper{color:#7a4b00;background:#fffaf0}
"""


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _inline_html(s: str) -> str:
    """Escape, then render `code` spans and **bold** (the only inline markup the report uses)."""
    import re

    parts = str(s).split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: keep it literally
        parts = [str(s)]
    out = []
    for i, part in enumerate(parts):
        e = html.escape(part)
        if i % 2 == 1:
            out.append(f"<code>{e}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", e))
    return "".join(out)
