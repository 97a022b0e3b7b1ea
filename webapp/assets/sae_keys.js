/* Keys of the SAE latent browser (webapp/views/sae): <- / -> step through latents, g jumps.
   Active only while the browser tab is shown and the focus is not in a text field. */
(function () {
  function typing(target) {
    var tag = (target && target.tagName || '').toLowerCase();
    return tag === 'input' || tag === 'textarea' || tag === 'select' || (target && target.isContentEditable);
  }
  document.addEventListener('keydown', function (event) {
    var browser = document.getElementById('sae-browser');
    if (!browser || browser.offsetParent === null || event.altKey || event.ctrlKey || event.metaKey) { return; }
    if (typing(event.target)) { return; }
    var id = event.key === 'ArrowLeft' ? 'sae-prev' : event.key === 'ArrowRight' ? 'sae-next' : null;
    if (id) {
      var button = document.getElementById(id);
      if (button) { event.preventDefault(); button.click(); }
    } else if (event.key === 'g') {
      var box = document.getElementById('sae-goto');
      if (box) { event.preventDefault(); box.focus(); box.select(); }
    }
  });
})();
