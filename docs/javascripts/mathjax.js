// MathJax configuration for pymdownx.arithmatex (generic mode): typeset only the spans and blocks
// that arithmatex marks, on every page load and every instant-navigation page switch. MathJax
// itself (tex-svg-full.js, SVG output: no web fonts to fetch) is copied into the site from the
// django-static-mathjax package by mkdocs_hooks.py, so the built site renders maths offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

document$.subscribe(() => {
  if (!window.MathJax.typesetPromise) return; // not loaded yet: its own startup typesets the page
  // Only CHTML output keeps a font cache; the SVG output used here has no clearCache (calling it threw
  // and left a page reached by instant navigation untypeset).
  if (MathJax.startup.output.clearCache) MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
