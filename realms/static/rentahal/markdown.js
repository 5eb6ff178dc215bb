// A small Markdown renderer for answers that builds DOM nodes and never HTML strings, so a
// model's answer cannot inject markup or script: every piece of text lands in textContent.
// Covers what chat models write: fenced code blocks (kept verbatim), headings, lists,
// block quotes, paragraphs, inline code, bold, italics and http(s) links.
"use strict";

const Markdown = (() => {
  const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/;

  function inline(parent, text) {
    while (text) {
      const match = INLINE.exec(text);
      if (!match) { parent.append(text); return; }
      if (match.index) parent.append(text.slice(0, match.index));
      if (match[1]) parent.append(element("code", match[2].trim()));
      else if (match[3] || match[4]) inline(parent.appendChild(document.createElement("strong")), match[3] || match[4]);
      else if (match[5] || match[6]) inline(parent.appendChild(document.createElement("em")), match[5] || match[6]);
      else {
        const link = element("a", match[7]);
        link.href = match[8];
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
        parent.append(link);
      }
      text = text.slice(match.index + match[0].length);
    }
  }

  function element(tag, text) {
    const node = document.createElement(tag);
    node.textContent = text;
    return node;
  }

  function withInline(tag, text) {
    const node = document.createElement(tag);
    inline(node, text);
    return node;
  }

  const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
  const QUOTE = /^\s*>\s?(.*)$/;

  function render(source) {
    const root = document.createDocumentFragment();
    const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    let paragraph = [];
    const flush = () => {
      if (paragraph.length) root.append(withInline("p", paragraph.join("\n")));
      paragraph = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = FENCE.exec(line);
      if (fence) {
        flush();
        const body = [];
        for (i++; i < lines.length && !new RegExp("^\\s*" + fence[1] + "\\s*$").test(lines[i]); i++) body.push(lines[i]);
        const pre = document.createElement("pre");
        const code = element("code", body.join("\n"));
        if (fence[2]) code.dataset.language = fence[2];
        pre.append(code);
        root.append(pre);
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) { flush(); root.append(withInline("h" + Math.min(6, heading[1].length + 2), heading[2])); continue; }
      const list = BULLET.exec(line) ? [BULLET, "ul"] : NUMBERED.exec(line) ? [NUMBERED, "ol"] : null;
      if (list) {
        flush();
        const node = document.createElement(list[1]);
        for (; i < lines.length && list[0].test(lines[i]); i++) node.append(withInline("li", list[0].exec(lines[i])[1]));
        i--;
        root.append(node);
        continue;
      }
      if (QUOTE.test(line)) {
        flush();
        const quoted = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) quoted.push(QUOTE.exec(lines[i])[1]);
        i--;
        const node = document.createElement("blockquote");
        node.append(render(quoted.join("\n")));
        root.append(node);
        continue;
      }
      if (!line.trim()) { flush(); continue; }
      paragraph.push(line);
    }
    flush();
    return root;
  }

  return { render };
})();
