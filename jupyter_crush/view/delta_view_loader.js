// Each run's module: imports the view's (delta_view.js), sent once per kernel in model
// `module_id`, once per page and version.
const LOADED = (globalThis.__jupyterCrushDeltaView ??= new Map());

function load(model) {
  const key = model.get("module_hash");
  if (!LOADED.has(key)) {
    const loading = model.widget_manager.get_model(model.get("module_id")).then(async (held) => {
      const style = document.head.appendChild(document.createElement("style"));
      style.textContent = held.get("css");
      const url = URL.createObjectURL(new Blob([held.get("esm")], { type: "text/javascript" }));
      try {
        return (await import(url)).default;
      } finally {
        URL.revokeObjectURL(url);
      }
    });
    loading.catch(() => LOADED.delete(key)); // the next model tries again
    LOADED.set(key, loading);
  }
  return LOADED.get(key);
}

export default {
  initialize: async (context) => (await load(context.model)).initialize(context),
  render: async (context) => (await load(context.model)).render(context),
};
