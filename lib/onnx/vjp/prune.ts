/**
 * A model cut down to the nodes that compute some of its outputs. onnxruntime runs every node of a graph whatever
 * the run fetches, so a guidance forward that only needs the maps of the object-resolution layers (in the middle
 * of the UNet) is its own, shorter graph: the decoder blocks after the last of those layers are never run.
 */
import type { AttributeProto, GraphProto, ModelProto, NodeProto } from '../proto';

/** Every tensor name a node reads, including outer-scope names read inside its subgraphs (If/Loop/Scan bodies). */
function nodeReads(n: NodeProto): string[] {
  const names = n.input.filter((i) => i !== '');
  const graphs = (a: AttributeProto): GraphProto[] => [...(a.g ? [a.g] : []), ...(a.graphs ?? [])];
  for (const a of n.attribute ?? []) for (const g of graphs(a)) for (const inner of g.node) names.push(...nodeReads(inner));
  return names;
}

/**
 * `model` with only the nodes (source order kept), initializers and value_info needed for `outputs`, which become
 * its only outputs. Every real graph input stays (callers feed the same inputs). Initializers are the source model's
 * TensorProto objects, shared by reference: external weights keep their locations and are never copied.
 */
export function pruneToOutputs(model: ModelProto, outputs: readonly string[]): ModelProto {
  const graph = model.graph;
  if (graph == null) throw new TypeError('pruneToOutputs: expected a decoded ModelProto with a graph');
  if (outputs.length === 0) throw new RangeError('pruneToOutputs: expected at least one output to keep');
  const declared = new Map(graph.output.map((o) => [o.name ?? '', o]));
  for (const o of outputs) {
    if (!declared.has(o)) throw new RangeError(`pruneToOutputs: '${o}' is not an output of the graph (outputs: ${[...declared.keys()].join(', ')})`);
  }
  const producer = new Map<string, NodeProto>();
  for (const n of graph.node) for (const o of n.output) if (o) producer.set(o, n);
  const keep = new Set<NodeProto>();
  const needed = new Set<string>();
  const stack = [...outputs];
  while (stack.length > 0) {
    const t = stack.pop()!;
    if (needed.has(t)) continue;
    needed.add(t);
    const p = producer.get(t);
    if (p === undefined || keep.has(p)) continue;
    keep.add(p);
    stack.push(...nodeReads(p));
  }
  const inits = new Set(graph.initializer.map((t) => t.name ?? ''));
  const pruned: GraphProto = {
    ...graph,
    // An initializer listed as an input (IR < 4) goes with its initializer.
    input: graph.input.filter((i) => !inits.has(i.name ?? '') || needed.has(i.name ?? '')),
    node: graph.node.filter((n) => keep.has(n)),
    initializer: graph.initializer.filter((t) => needed.has(t.name ?? '')),
    output: outputs.map((o) => declared.get(o)!),
    value_info: graph.value_info.filter((v) => needed.has(v.name ?? '')),
  };
  return { ...model, graph: pruned };
}
