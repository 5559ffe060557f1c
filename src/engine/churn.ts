/**
 * The churn policy: no machine older than `maxAge` since it was last built. Machines past the limit are
 * rebuilt (their pipeline from the top) by rollouts the policy creates, never more than the budget at once
 * — and a failing rebuild stops the line like any rollout.
 */
import { DURATION_RANGES, parseDuration, formatDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import type { Machine } from '../model/machine.js';
import type { Store } from '../store/store.js';
import type { Records } from './records.js';
import type { RolloutView, Rollouts } from './rollouts.js';

export const CHURN_KEY = 'policy.churn';
export const CHURN_AUTHOR = 'policy:churn';

export interface ChurnPolicy {
  maxAge: string;
  maxAgeMs: number;
  /** `10%` of the fleet, or a number of machines. */
  budget: string;
}

export interface ChurnStatus {
  policy: ChurnPolicy | null;
  machines: number;
  /** How many machines may rebuild at once. */
  budget: number;
  /** Age histogram relative to the limit: 0–25 %, 25–50 %, 50–75 %, 75–100 %, over. */
  ages: Array<{ bucket: string; machines: number }>;
  over: Array<{ name: string; age: string }>;
  rollouts: Array<Pick<RolloutView, 'id' | 'state' | 'reason' | 'counts'>>;
}

export function parseBudget(budget: string): { percent?: number; count?: number } {
  const pct = /^(\d+(?:\.\d+)?)%$/.exec(budget);
  if (pct && Number(pct[1]) > 0 && Number(pct[1]) <= 100) return { percent: Number(pct[1]) };
  if (/^\d+$/.test(budget) && Number(budget) > 0) return { count: Number(budget) };
  throw new TaktError('invalid', `budget '${budget}' is neither a percentage of the fleet (e.g. 10%) nor a number of machines`, { path: '/budget' });
}

export class Churn {
  private timer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;

  constructor(
    private readonly store: Store,
    private readonly records: Records,
    private readonly rollouts: Rollouts,
    private readonly opts: { checkMs?: number; log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void } = {},
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.check(), this.opts.checkMs ?? 60_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  async set(input: { maxAge: string; budget: string }, author: string): Promise<ChurnStatus> {
    const policy: ChurnPolicy = { maxAge: input.maxAge, maxAgeMs: parseDuration(input.maxAge, 'max-age', DURATION_RANGES.maxAge), budget: input.budget };
    if (policy.maxAgeMs <= 0) throw new TaktError('invalid', 'max-age must be more than zero', { path: '/maxAge' });
    parseBudget(input.budget);
    await this.store.transact(async (tx) => {
      const before = await tx.getSetting<ChurnPolicy>(CHURN_KEY);
      await tx.putSetting(CHURN_KEY, policy);
      await tx.change(author, 'policies/churn', before ? 'update' : 'create', before ?? null, policy);
      tx.emit('policies.update.churn', policy);
    });
    await this.check();
    return this.status();
  }

  async clear(author: string): Promise<void> {
    await this.store.transact(async (tx) => {
      const before = await tx.getSetting<ChurnPolicy>(CHURN_KEY);
      if (!before) throw new TaktError('not_found', 'no churn policy is set');
      await tx.putSetting(CHURN_KEY, null);
      await tx.change(author, 'policies/churn', 'delete', before, null);
      tx.emit('policies.delete.churn', {});
    });
  }

  /** When the machine was last built: its current build's oldest task, or its creation if never built. */
  async builtAt(m: Machine): Promise<number> {
    const entries = await this.records.entries(m);
    const times = entries.map((e) => Date.parse(e.finishedAt ?? '')).filter((t) => Number.isFinite(t));
    return times.length ? Math.min(...times) : Date.parse(m.createdAt);
  }

  async status(): Promise<ChurnStatus> {
    const policy = (await this.store.getSetting<ChurnPolicy>(CHURN_KEY)) ?? null;
    const fleet = await this.fleet();
    const now = Date.now();
    const limit = policy?.maxAgeMs ?? Infinity;
    const buckets = ['0-25%', '25-50%', '50-75%', '75-100%', 'over'].map((bucket) => ({ bucket, machines: 0 }));
    const over: ChurnStatus['over'] = [];
    for (const { machine, builtAt } of fleet) {
      const age = now - builtAt;
      const i = age > limit ? 4 : Math.min(3, Math.floor((age / limit) * 4));
      buckets[Number.isFinite(i) ? i : 0]!.machines += 1;
      if (age > limit) over.push({ name: machine.name, age: formatDuration(age) });
    }
    const active = (await this.rollouts.list(['running', 'paused', 'awaiting-approval', 'stopped'])).filter((r) => r.author === CHURN_AUTHOR);
    return {
      policy,
      machines: fleet.length,
      budget: policy ? this.budgetOf(policy, fleet.length) : 0,
      ages: buckets,
      over,
      rollouts: active.map(({ id, state, reason, counts }) => ({ id, state, reason, counts })),
    };
  }

  /**
   * Schedules rebuilds for machines past the limit, within the budget. One policy rollout at a time, across
   * replicas too: the rollout is created only if none of the policy's is active, decided in its transaction.
   */
  check(): Promise<void> {
    this.checking ??= this.schedule()
      .catch((err: unknown) => this.opts.log?.('error', 'churn check failed', { err: String(err) }))
      .finally(() => (this.checking = null));
    return this.checking;
  }

  private async schedule(): Promise<void> {
    const policy = await this.store.getSetting<ChurnPolicy>(CHURN_KEY);
    if (!policy) return;
    const active = (await this.rollouts.list(['running', 'paused', 'awaiting-approval', 'stopped'])).filter((r) => r.author === CHURN_AUTHOR);
    if (active.length > 0) return;
    const fleet = await this.fleet();
    const now = Date.now();
    const due = fleet.filter(({ builtAt, machine }) => now - builtAt > policy.maxAgeMs && machine.state !== 'running' && machine.state !== 'paused');
    if (due.length === 0) return;
    // One pipeline per rollout: rebuild the largest group first.
    const byPipeline = new Map<string, Machine[]>();
    for (const { machine } of due) byPipeline.set(machine.pipeline!, [...(byPipeline.get(machine.pipeline!) ?? []), machine]);
    const [pipeline, machines] = [...byPipeline.entries()].sort((a, b) => b[1].length - a[1].length)[0]!;
    const budget = this.budgetOf(policy, fleet.length);
    try {
      const r = await this.rollouts.create(
        {
          pipeline,
          select: { policy: `churn max-age ${policy.maxAge}` },
          machineIds: machines.map((m) => m.id),
          canary: 1,
          batch: budget,
          maxInFlight: budget,
          maxFailures: 0,
        },
        CHURN_AUTHOR,
        // Checked again in the creating transaction: replicas checking at once create one rollout.
        { exclusive: true },
      );
      this.opts.log?.('info', `churn: rebuilding ${machines.length} machine(s) older than ${policy.maxAge}`, { rollout: r.id, budget });
    } catch (err) {
      // A machine already in another rollout: try again at the next check.
      if (!(err instanceof TaktError)) throw err;
      // Another replica's check created the policy's rollout first: nothing to do.
      if ((err.details as { exclusive?: boolean } | undefined)?.exclusive) return;
      this.opts.log?.('warn', `churn: cannot schedule rebuilds yet: ${err.message}`);
    }
  }

  private budgetOf(policy: ChurnPolicy, fleet: number): number {
    const b = parseBudget(policy.budget);
    return Math.max(1, b.count ?? Math.floor((fleet * b.percent!) / 100));
  }

  /** Machines the policy covers: those with a pipeline to rebuild them with. */
  private async fleet(): Promise<Array<{ machine: Machine; builtAt: number }>> {
    const out: Array<{ machine: Machine; builtAt: number }> = [];
    for (let offset = 0; ; offset += 1000) {
      const page = await this.store.listMachines({ limit: 1000, offset });
      for (const m of page) if (m.pipeline) out.push({ machine: m, builtAt: await this.builtAt(m) });
      if (page.length < 1000) return out;
    }
  }
}
