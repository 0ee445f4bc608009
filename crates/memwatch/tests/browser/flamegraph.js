// A person's check of the flame graph in a real browser (not run by cargo: needs node and
// chromium): `npm install playwright-core` then
// `node crates/memwatch/tests/browser/flamegraph.js REPORT_DIR/flamegraph.svg FUNCTION`.
// Clicks FUNCTION's box (it must zoom to the full width), searches "gimli" through the
// Search button's prompt, resets, and writes /tmp/flame-zoomed.png and /tmp/flame-search.png.
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
  const page = await browser.newPage({ viewport: { width: 1200, height: 1460 } });
  const errors = [];
  page.on('pageerror', e => errors.push(e.message));
  await page.goto('file://' + process.argv[2]);
  // Click the service's own frame: it zooms.
  const target = page.locator('g.f[data-n="' + (process.argv[3] || 'recorder_oom::service::auth') + '"]').first();
  const before = await target.locator('rect').getAttribute('width');
  await target.click();
  const after = await target.locator('rect').getAttribute('width');
  const hidden = await page.evaluate(() => memwatchFlame.frames.filter(f => f.style.display === 'none').length);
  const resetVisible = await page.locator('#reset-zoom').isVisible();
  await page.screenshot({ path: '/tmp/flame-zoomed.png' });
  // Search via the button (prompt answered).
  page.once('dialog', d => d.accept('gimli'));
  await page.locator('#search').click();
  const matched = await page.locator('#matched').textContent();
  const matches = await page.locator('g.f.match').count();
  await page.screenshot({ path: '/tmp/flame-search.png' });
  await page.locator('#reset-zoom').click();
  const resetWidth = await target.locator('rect').getAttribute('width');
  const tooltip = await target.locator('title').textContent();
  console.log(JSON.stringify({ before, after, hidden, resetVisible, matched, matches, resetWidth, tooltip, errors }));
  await browser.close();
})();
