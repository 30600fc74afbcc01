// Which page this is (body[data-page]), its module, and the common frame around it.

import { setUpToken } from "./api.js";
import { fail } from "./dom.js";

const page = document.body.dataset.page;
document.querySelector(`[data-nav="${page}"]`)?.setAttribute("aria-current", "page");
setUpToken();

try {
  const module = await import(`./pages/${page}.js`);
  await module.render(document.getElementById("app"));
} catch (err) {
  fail(err);
}
