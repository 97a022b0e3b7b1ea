/* The scan run page: the layer-time animation, entirely in the browser.
 *
 * The figure in #scan-graph carries one Plotly frame per layer (named "0".."F-1";
 * layout.meta.labels names them). This script never calls the server per frame:
 * buttons [data-scan-action], the keys space (play / pause), "[" and "]" (step),
 * the slider and clicks on #scan-curve / #scan-heatmap (x = frame) all end in
 * Plotly.animate on the figure. On every shown frame it writes the label into
 * #scan-frame-label (data-frame = index), moves the curve's first shape (the
 * current-layer line) and keeps the index in the dcc.Store "scan-current", so a
 * redraw from the server (colour, trails, rendering) starts at the same frame.
 * window.atlasScan exposes go/play/pause/step/current for tests and benchmarks.
 */
(function () {
  'use strict';
  var state = {current: 0, playing: false};

  function plotIn(id) {
    var el = document.getElementById(id);
    var gd = el ? el.querySelector('.js-plotly-plot') : null;
    return gd && gd._fullLayout ? gd : null;
  }
  function graph() { return plotIn('scan-graph'); }
  function frameCount(gd) { return (gd.layout.meta && gd.layout.meta.n_frames) || 0; }
  function labelOf(gd, i) {
    var labels = gd.layout.meta && gd.layout.meta.labels;
    return labels && labels[i] !== undefined ? labels[i] : String(i);
  }
  function speed() {
    var el = document.getElementById('scan-speed');
    var ms = el ? parseInt(el.value, 10) : 400;
    return isFinite(ms) && ms > 0 ? ms : 400;
  }
  function setButtons() {
    var play = document.getElementById('scan-play');
    var pause = document.getElementById('scan-pause');
    if (play) { play.classList.toggle('active', state.playing); }
    if (pause) { pause.classList.toggle('active', !state.playing); }
  }

  function shown(gd, index) {
    state.current = index;
    var label = document.getElementById('scan-frame-label');
    if (label) {
      label.textContent = labelOf(gd, index);
      label.setAttribute('data-frame', String(index));
    }
    var curve = plotIn('scan-curve');
    if (curve && curve.layout.shapes && curve.layout.shapes.length) {
      Plotly.relayout(curve, {'shapes[0].x0': index, 'shapes[0].x1': index});
    }
    if (window.dash_clientside && window.dash_clientside.set_props) {
      window.dash_clientside.set_props('scan-current', {data: index});
    }
  }

  function done() { state.playing = false; setButtons(); }

  function pause() {
    var gd = graph();
    if (!gd || !state.playing) { return; }
    state.playing = false;
    setButtons();
    Plotly.animate(gd, [null], {mode: 'immediate', frame: {duration: 0, redraw: false},
                                transition: {duration: 0}});
  }

  function go(index) {
    var gd = graph();
    if (!gd) { return Promise.resolve(); }
    var n = frameCount(gd);
    index = Math.max(0, Math.min(n - 1, index));
    pause();
    return Plotly.animate(gd, [String(index)], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                                transition: {duration: 0}});
  }

  function play() {
    var gd = graph();
    if (!gd || state.playing) { return; }
    var n = frameCount(gd);
    var from = state.current >= n - 1 ? 0 : state.current + 1;
    var names = [];
    for (var i = from; i < n; i++) { names.push(String(i)); }
    state.playing = true;
    setButtons();
    Plotly.animate(gd, names, {mode: 'immediate', frame: {duration: speed(), redraw: true},
                               transition: {duration: 0}}).then(done, done);
  }

  function toggle() { if (state.playing) { pause(); } else { play(); } }
  function step(delta) { return go(state.current + delta); }

  function hook() {
    var gd = graph();
    if (gd && gd.__scanLayout !== gd.layout) {  // a new figure (first draw or a server redraw)
      gd.__scanLayout = gd.layout;
      state.playing = false;
      setButtons();
      var slider = gd.layout.sliders && gd.layout.sliders[0];
      shown(gd, slider && slider.active ? slider.active : 0);
      if (!gd.__scanHooked) {
        gd.__scanHooked = true;
        gd.on('plotly_animatingframe', function (event) {
          var index = parseInt(event.name, 10);
          if (isFinite(index)) { shown(gd, index); }
        });
      }
    }
    ['scan-curve', 'scan-heatmap'].forEach(function (id) {
      var plot = plotIn(id);
      if (plot && !plot.__scanHooked) {
        plot.__scanHooked = true;
        plot.on('plotly_click', function (event) {
          var point = event && event.points && event.points[0];
          if (point && isFinite(point.x)) { go(Math.round(point.x)); }
        });
      }
    });
  }

  document.addEventListener('click', function (event) {
    var button = event.target.closest ? event.target.closest('[data-scan-action]') : null;
    if (!button) { return; }
    button.blur();  // so that space goes to the animation, not to the focused button
    var gd = graph();
    var action = button.getAttribute('data-scan-action');
    if (action === 'play') { play(); }
    else if (action === 'pause') { pause(); }
    else if (action === 'prev') { step(-1); }
    else if (action === 'next') { step(1); }
    else if (action === 'first') { go(0); }
    else if (action === 'last' && gd) { go(frameCount(gd) - 1); }
  });

  document.addEventListener('keydown', function (event) {
    if (!graph() || event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    var tag = target && target.tagName ? target.tagName.toLowerCase() : '';
    if (tag === 'input' || tag === 'textarea' || tag === 'select' || (target && target.isContentEditable)) {
      return;
    }
    if (event.key === ' ') { event.preventDefault(); toggle(); }
    else if (event.key === '[') { event.preventDefault(); step(-1); }
    else if (event.key === ']') { event.preventDefault(); step(1); }
  });

  setInterval(hook, 250);
  window.atlasScan = {go: go, play: play, pause: pause, step: step, toggle: toggle,
                      current: function () { return state.current; },
                      playing: function () { return state.playing; }};
})();
