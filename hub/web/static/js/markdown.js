// A small Markdown renderer that builds DOM nodes and never parses HTML.
//
// Why our own: a model's reply (and anything it quotes from tool output) is untrusted text.
// Renderers that produce an HTML string need a sanitizer to be safe; this one only ever makes
// elements with createElement and puts text in with text nodes, so `<script>` or
// `<img onerror=…>` in a reply are shown as the characters they are. Links are kept only
// for http(s) and mailto URLs; images are shown as their alt text (the page loads nothing
// a reply names). Covers what models write: paragraphs, headings, emphasis, code spans and
// fenced blocks, lists, quotes, tables, rules, links. Unclosed fences (a reply still
// streaming) render as code so far.

const el = (tag, ...kids) => {
  const node = document.createElement(tag);
  for (const kid of kids) node.append(kid instanceof Node ? kid : document.createTextNode(kid));
  return node;
};

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

/** Markdown text → a DocumentFragment. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  for (const node of blocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"))) frag.append(node);
  return frag;
}

function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i += 1; continue; }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      i += 1;
      const code = el("code", body.join("\n"));
      if (m[2]) code.className = `language-${m[2]}`;
      out.push(el("pre", code));
    } else if ((m = HEADING.exec(line))) {
      out.push(el(`h${m[1].length}`, ...inline(m[2])));
      i += 1;
    } else if (RULE.test(line)) {
      out.push(el("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { body.push(m[1]); i += 1; }
      out.push(el("blockquote", ...blocks(body)));
    } else if (ITEM.test(line)) {
      i = list(lines, i, out);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      i = table(lines, i, out);
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && !startsBlock(lines, i)) para.push(lines[i++].trim());
      const p = el("p");
      para.forEach((part, n) => {
        if (n) p.append(el("br"));
        p.append(...inline(part));
      });
      out.push(p);
    }
  }
  return out;
}

function startsBlock(lines, i) {
  const line = lines[i];
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    ITEM.test(line) || (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]));
}

function list(lines, i, out) {
  const first = ITEM.exec(lines[i]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const body = [m[3]];
    i += 1;
    // The item goes on over deeper-indented lines (a nested list, a wrapped line), lines
    // that start no block (lazy continuation), and blank lines followed by indentation.
    while (i < lines.length) {
      const next = lines[i];
      const lead = leading(next);
      if (!next.trim()) {
        const after = lines[i + 1];
        if (after === undefined || !after.trim() || leading(after) <= indent) break;
        body.push("");
      } else if (lead > indent) {
        body.push(next.slice(Math.min(lead, indent + 2, indent + m[2].length + 1)));
      } else if (!startsBlock(lines, i)) {
        body.push(next.trim());
      } else break;
      i += 1;
    }
    const li = el("li");
    if (body.length === 1) li.append(...inline(body[0]));
    else {
      const inner = blocks(body);
      // A short item stays a line, not a paragraph.
      if (inner[0]?.tagName === "P") li.append(...inner.shift().childNodes);
      li.append(...inner);
    }
    node.append(li);
    let j = i;
    while (j < lines.length && !lines[j].trim()) j += 1;
    if (j > i && ITEM.exec(lines[j] || "")?.[1].length === indent) i = j;  // a loose list goes on
  }
  out.push(node);
  return i;
}

const leading = (line) => line.length - line.trimStart().length;

function cells(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function table(lines, i, out) {
  const head = cells(lines[i]);
  const align = cells(lines[i + 1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
  const node = el("table", el("thead", el("tr", ...head.map((c, n) => withAlign(el("th", ...inline(c)), align[n])))));
  const body = el("tbody");
  i += 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
    body.append(el("tr", ...cells(lines[i]).map((c, n) => withAlign(el("td", ...inline(c)), align[n]))));
    i += 1;
  }
  node.append(body);
  node.className = "md-table";
  out.push(node);
  return i;
}

function withAlign(cell, align) {
  if (align) cell.className = `align-${align}`;
  return cell;
}

// ------------------------------------------------------------------ inline
const INLINE = new RegExp([
  /\\([\\`*_{}[\]()#+\-.!~|<>])/.source,                         // 1 escape
  /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source,                   // 2,3 code span
  /!\[([^\]]*)\]\(([^)\s]*)(?:\s+"[^"]*")?\)/.source,            // 4,5 image (as text)
  /\[([^\]]+)\]\(([^)\s]+)(?:\s+"[^"]*")?\)/.source,             // 6,7 link
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source,                           // 8 strong
  /(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])/.source,               // 9 strong
  /~~(?=\S)([\s\S]*?\S)~~/.source,                               // 10 strike
  /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source,                        // 11 em
  /(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])/.source,         // 12 em
  /<(https?:\/\/[^\s<>]+)>/.source,                              // 13 autolink
  /(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"*_~\]])/.source,          // 14 bare URL
].map((s) => `(?:${s})`).join("|"));

export function safeHref(url) {
  try {
    const parsed = new URL(url, location.href);
    return ["http:", "https:", "mailto:"].includes(parsed.protocol) ? parsed.href : null;
  } catch {
    return null;
  }
}

function link(text, url) {
  const href = safeHref(url);
  if (!href) return document.createTextNode(text === url ? url : `${text} (${url})`);
  // A bare URL is its own text; a link's text may hold emphasis (but no bare URL: no nesting).
  const a = text === url ? el("a", text) : el("a", ...inline(text).map((n) => (n.tagName === "A" ? n.textContent : n)));
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}

/** Inline Markdown → nodes (text nodes and a few elements). */
export function inline(text) {
  const out = [];
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) { out.push(document.createTextNode(rest)); break; }
    if (m.index) out.push(document.createTextNode(rest.slice(0, m.index)));
    rest = rest.slice(m.index + m[0].length);
    if (m[1] !== undefined) out.push(document.createTextNode(m[1]));
    else if (m[3] !== undefined) out.push(el("code", m[3].replace(/^ (.*) $/, "$1")));
    else if (m[5] !== undefined) out.push(document.createTextNode(m[4] ? `[image: ${m[4]}]` : "[image]"));
    else if (m[7] !== undefined) out.push(link(m[6], m[7]));
    else if (m[8] !== undefined || m[9] !== undefined) out.push(el("strong", ...inline(m[8] ?? m[9])));
    else if (m[10] !== undefined) out.push(el("del", ...inline(m[10])));
    else if (m[11] !== undefined || m[12] !== undefined) out.push(el("em", ...inline(m[11] ?? m[12])));
    else if (m[13] !== undefined) out.push(link(m[13], m[13]));
    else if (m[14] !== undefined) out.push(link(m[14], m[14]));
  }
  return out;
}
