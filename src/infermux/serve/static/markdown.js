// A small Markdown renderer for the chat page: fenced code, headings, lists, paragraphs, and inline code,
// bold, italics and http(s) links. It builds DOM nodes and sets only textContent, never innerHTML: any
// HTML in a model's answer is shown as the text it is, never run.
"use strict";

const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\s\n][^*\n]*\*)|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g;

function appendInline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
    let node;
    if (m[1]) {
      node = document.createElement("code");
      node.textContent = m[1].slice(1, -1);
    } else if (m[2]) {
      node = document.createElement("strong");
      appendInline(node, m[2].slice(2, -2));
    } else if (m[3]) {
      node = document.createElement("em");
      appendInline(node, m[3].slice(1, -1));
    } else {
      node = document.createElement("a");
      node.href = m[5]; // the pattern admits http(s) URLs only: no javascript: links
      node.rel = "noopener noreferrer";
      node.target = "_blank";
      node.textContent = m[4];
    }
    parent.appendChild(node);
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}

function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let i = 0;
  let paragraph = [];
  const flush = () => {
    if (!paragraph.length) return;
    const p = document.createElement("p");
    appendInline(p, paragraph.join("\n"));
    out.appendChild(p);
    paragraph = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)/);
    if (fence) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of an answer still streaming)
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[1]) code.dataset.lang = fence[1];
      code.textContent = body.join("\n");
      pre.appendChild(code);
      out.appendChild(pre);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flush();
      const h = document.createElement("h" + Math.min(heading[1].length + 1, 4));
      appendInline(h, heading[2]);
      out.appendChild(h);
      i += 1;
      continue;
    }
    const bullet = /^\s*[-*+]\s+(.*)$/;
    const numbered = /^\s*(\d+)[.)]\s+(.*)$/;
    if (bullet.test(line) || numbered.test(line)) {
      flush();
      const ordered = numbered.test(line) && !bullet.test(line);
      const pattern = ordered ? numbered : bullet;
      const list = document.createElement(ordered ? "ol" : "ul");
      if (ordered && line.match(numbered)[1] !== "1") list.start = Number(line.match(numbered)[1]);
      while (i < lines.length && pattern.test(lines[i])) {
        const m = lines[i].match(pattern);
        const li = document.createElement("li");
        appendInline(li, ordered ? m[2] : m[1]);
        list.appendChild(li);
        i += 1;
      }
      out.appendChild(list);
      continue;
    }
    if (line.trim() === "") flush();
    else paragraph.push(line);
    i += 1;
  }
  flush();
  return out;
}
