(function () {
  "use strict";
  var root = document.documentElement;
  var errors = [];
  function record(msg) {
    errors.push(String(msg));
    root.setAttribute("data-trapdoor-errors", errors.join(" | "));
  }
  window.addEventListener("error", function (e) { record(e.message || "error"); });
  var consoleError = console.error;
  console.error = function () {
    record(Array.prototype.slice.call(arguments).join(" "));
    return consoleError.apply(console, arguments);
  };

  // Sections that are long are collapsed behind a button.
  document.querySelectorAll("button[data-toggle]").forEach(function (b) {
    b.addEventListener("click", function () {
      var target = document.getElementById(b.getAttribute("data-toggle"));
      if (!target) { return; }
      target.hidden = !target.hidden;
      b.textContent = target.hidden ? b.getAttribute("data-show") : b.getAttribute("data-hide");
      b.setAttribute("aria-expanded", String(!target.hidden));
    });
  });

  // Outline the tokens whose Jensen-Shannon divergence is at or above the chosen threshold.
  var slider = document.getElementById("js-threshold");
  var shown = document.getElementById("js-threshold-value");
  var tokens = document.querySelectorAll(".tok[data-js]");
  function highlight() {
    var threshold = slider ? parseFloat(slider.value) : 0.1;
    if (shown) { shown.textContent = threshold.toFixed(2); }
    var hot = 0;
    tokens.forEach(function (t) {
      var on = parseFloat(t.getAttribute("data-js")) >= threshold;
      t.classList.toggle("hot", on);
      if (on) { hot += 1; }
    });
    root.setAttribute("data-trapdoor-hot-tokens", String(hot));
  }
  if (slider) { slider.addEventListener("input", highlight); }
  highlight();

  root.setAttribute("data-trapdoor-ready", "1");
}());
