/* The color mode of the Airflow UI around this page (same origin): the class of its <html>
   ("dark"/"light", set by next-themes), else its stored choice (localStorage "theme"), else the
   system's prefers-color-scheme. Follows changes while the page is open. */
(function () {
  var root = document.documentElement;
  function fromParent() {
    try {
      if (window.parent !== window) {
        var c = window.parent.document.documentElement.classList;
        if (c.contains("dark")) return "dark";
        if (c.contains("light")) return "light";
      }
    } catch (e) { /* not same origin */ }
    return null;
  }
  function stored() {
    try {
      var t = window.localStorage.getItem("theme");
      if (t === "dark" || t === "light") return t;
    } catch (e) { /* storage blocked */ }
    return null;
  }
  var media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  function apply() {
    var mode = fromParent() || stored() || (media && media.matches ? "dark" : "light");
    root.setAttribute("data-theme", mode);
    root.style.colorScheme = mode;
  }
  apply();
  window.addEventListener("storage", apply);
  if (media && media.addEventListener) media.addEventListener("change", apply);
  try {
    if (window.parent !== window && window.MutationObserver) {
      new MutationObserver(apply).observe(window.parent.document.documentElement,
        { attributes: true, attributeFilter: ["class"] });
    }
  } catch (e) { /* not same origin */ }
})();
