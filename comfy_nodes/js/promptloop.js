// PromptLoop Trace: show the trace's text in the node, in a read-only text box (as ComfyUI's
// own "Preview Any" node does). The box is not a node input: it is neither saved in the
// workflow nor sent with the prompt.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const TEXT_WIDGET = "trace_text";

app.registerExtension({
  name: "PromptLoop.TraceText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "PromptLoopTrace") return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const widget = ComfyWidgets.STRING(this, TEXT_WIDGET, ["STRING", { multiline: true }], app).widget;
      widget.element.readOnly = true;
      widget.element.placeholder = "The refinements (prompt after each refine step) appear here after a run.";
      widget.serialize = false;
      widget.options = { ...(widget.options ?? {}), serialize: false };
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === TEXT_WIDGET);
      if (widget && message?.text) widget.value = message.text.join("\n");
    };
  },
});
