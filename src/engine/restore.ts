/**
 * The one rule for putting desired state back — `history revert`, `history rewind` and `takt import` onto a
 * machine that exists — beside what the machine observed. Pure functions; the engine and the planners
 * (history.ts, portable.ts) apply them, and the reports say what they decided.
 *
 * - **Params are desired, outputs observed.** A restored param is written as a param (the change is made
 *   and counted); the machine's outputs — values its jobs set with `takt-set` — are never deleted or rolled
 *   back. When a restored param is shadowed by an output of the same name (outputs sit above the machine's
 *   params: src/render/params.ts) the report says so, since templates go on seeing the output.
 * - **A restore starts no work.** When the pipeline assignment changes, the machine takes the place
 *   recorded for that pipeline (an export's place; for a rewind or revert, the place it had there) when that
 *   place is valid in the content it will run, and holds there; otherwise it is held at the start of the
 *   pipeline. Either way it is `paused` (or keeps a recorded stopped/awaiting-approval/done state) with a
 *   reason naming the command that continues it.
 */
import { emptyContentSet } from '../model/content.js';
import type { Machine, MachineState } from '../model/machine.js';
import { isSealed, MASK } from '../model/secure.js';
import { paramLayers, resolveParam } from '../render/params.js';
import { locate, pipelineOrder, type MachineView, type PipelineShape } from './transitions.js';

/** Where a machine stood in a pipeline, as a restore knows it (an export's place, or history and jobs). */
export interface RecordedPlace {
  state: MachineState;
  reason: string | null;
  stage: string | null;
  task: string | null;
  /** `stage/task` keys of the tasks that had succeeded in that pass (transitions.ts `Step.key`). */
  passed: string[];
  approvedStage?: string | null;
}

/** The machine fields a restore sets when it changes the pipeline. */
export type RestoredPlace = Pick<MachineView, 'state' | 'reason' | 'stage' | 'task' | 'passed' | 'attempt' | 'approvedStage'>;

/** A restore's decision for one machine whose pipeline it changes: where it stands and a line for the report. */
export interface PlaceDecision {
  place: RestoredPlace;
  /** e.g. `web-1: pipeline demo → other: held at start (…); takt machines resume web-1 runs it from its first task` */
  note: string;
}

const shownValue = (v: unknown) => JSON.stringify(isSealed(v) ? MASK : v);

/**
 * Where a machine goes when a restore changes its pipeline from `from` to `to` (non-null). `shape`: `to` in
 * the content it will run. `recorded`: its place in `to` (null when none is known). `by`: what made the
 * change, for the reason (`an import`, `rewind to #40`, `revert of #12`).
 * Never `running`: a valid recorded place is kept and held (a stopped, awaiting-approval or done machine keeps
 * that state); an unknown, invalid or ambiguous one (see transitions.ts `locate`, strict) holds the machine at
 * the start of `to`.
 */
export function placeOnReassign(machine: string, from: string | null, to: string, shape: PipelineShape | null, recorded: RecordedPlace | null, by: string): PlaceDecision {
  const head = `${machine}: pipeline ${from ?? '(none)'} → ${to}`;
  const resume = `\`takt machines resume ${machine}\``;
  const restart = `\`takt machines restart ${machine}\``;
  const atStart = (why: string): PlaceDecision => ({
    place: { state: 'paused', reason: `pipeline changed from ${from ?? '(none)'} to ${to} by ${by}; held at its start (${why}); ${resume} runs it from its first task`, stage: null, task: null, passed: [], attempt: 0, approvedStage: null },
    note: `${head}: held at start (${why}); ${resume} runs it`,
  });
  if (!shape) return atStart(`pipeline '${to}' is not in the content`);
  if (!recorded || !Array.isArray(recorded.passed) || (recorded.stage === undefined && recorded.task === undefined)) return atStart(`no place recorded in ${to}`);
  const at = locate(shape, { stage: recorded.stage ?? null, task: recorded.task ?? null, passed: recorded.passed }, true);
  if (at.kind === 'refused') return atStart(`its recorded place is not valid in the content in use: ${at.message}`);
  // Keys the pipeline no longer has are forgotten, as a resume would.
  const keys = new Set(pipelineOrder(shape).map((s) => s.key));
  const passed = recorded.passed.filter((k) => keys.has(k));
  if (at.kind === 'done') {
    return {
      place: { state: 'done', reason: null, stage: null, task: null, passed, attempt: 0, approvedStage: recorded.approvedStage ?? null },
      note: `${head}: done, as recorded (every task had succeeded); ${restart} runs it again`,
    };
  }
  const where = `${at.step.stage}/${at.step.task}`;
  const kept = recorded.state === 'stopped' || recorded.state === 'awaiting-approval' || recorded.state === 'paused';
  const state: MachineState = kept ? recorded.state : 'paused';
  const what = `pipeline changed from ${from ?? '(none)'} to ${to} by ${by}; held at ${where}, where it stood in ${to} (${passed.length} task${passed.length === 1 ? '' : 's'} had succeeded); ${resume} continues there, ${restart} runs it from its first task`;
  // A stopped (or awaiting) machine keeps why it stopped there, and says what put it back.
  const reason = kept && recorded.reason ? `${recorded.reason} — ${what}` : what;
  return {
    place: { state, reason, stage: at.step.stage, task: at.step.task, passed, attempt: 0, approvedStage: recorded.approvedStage ?? null },
    note: `${head}: ${state === 'paused' ? 'held' : state} at ${where} (${passed.length} task${passed.length === 1 ? '' : 's'} had succeeded); ${state === 'awaiting-approval' ? `\`takt approvals approve ${machine}\`` : resume} continues, ${restart} runs it from the top`,
  };
}

/**
 * The place a machine had in `shape` from the pipeline jobs it ran there in one stretch (oldest first):
 * the tasks that succeeded in the last pass, and the task it stood on when the last job did not succeed.
 * A task succeeding (or running) again after it had succeeded means a new pass began (a restart); so does
 * nothing else this can see. A task the pipeline no longer has is recorded by name, as the engine does.
 */
export function placeFromJobs(shape: PipelineShape, jobs: ReadonlyArray<{ stage: string | null; task: string; state: string }>): Pick<RecordedPlace, 'stage' | 'task' | 'passed'> {
  const order = pipelineOrder(shape);
  let passed: string[] = [];
  let stage: string | null = null;
  let task: string | null = null;
  for (const j of jobs) {
    if (j.state === 'running') continue;
    const named = order.filter((s) => s.stage === j.stage && s.task === j.task);
    const open = named.find((s) => !passed.includes(s.key));
    if (named.length > 0 && !open) passed = [];
    const step = open ?? named[0];
    if (j.state === 'succeeded') {
      passed = [...passed, step?.key ?? `${j.stage ?? '?'}/${j.task}`];
      stage = null;
      task = null;
    } else {
      stage = j.stage;
      task = j.task;
    }
  }
  return { stage, task, passed };
}

/**
 * The report's lines for desired params a restore writes that the machine's outputs shadow: `param build_id
 * restored to 7; the machine's output build_id=9 still takes precedence`. `params`: what the restore sets
 * (null: removed, which nothing shadows). Precedence is params.ts's own, not a copy of it.
 */
export function shadowedParams(m: Pick<Machine, 'outputs'>, params: Record<string, unknown>): string[] {
  const out: string[] = [];
  const after = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== null && v !== undefined));
  const layers = paramLayers(emptyContentSet(), { machine: { params: after, profiles: [], outputs: m.outputs } });
  const content = emptyContentSet();
  for (const [k, v] of Object.entries(after)) {
    if (resolveParam(content, layers, k)?.from !== 'outputs') continue;
    out.push(`param ${k} restored to ${shownValue(v)}; the machine's output ${k}=${shownValue(m.outputs[k])} still takes precedence`);
  }
  return out;
}
