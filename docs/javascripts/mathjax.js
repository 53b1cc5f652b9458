// MathJax 3 configuration for pymdownx.arithmatex (generic mode): it wraps inline math in \( \) and display
// math in \[ \], inside elements of class "arithmatex"; MathJax typesets only those.
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
