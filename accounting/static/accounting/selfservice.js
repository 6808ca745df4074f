// The copy button of a new key: the Clipboard API where the page may use it (HTTPS or
// localhost), else the text is selected for Ctrl+C. The key is never stored by the page.
document.querySelectorAll("button[data-copy]").forEach((button) => {
  button.addEventListener("click", async () => {
    const node = document.getElementById(button.dataset.copy);
    const range = document.createRange();
    range.selectNodeContents(node);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try {
      await navigator.clipboard.writeText(node.textContent);
      button.textContent = "Copied";
    } catch (error) {
      button.textContent = "Selected: press Ctrl+C";
    }
  });
});
