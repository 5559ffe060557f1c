/** A once-a-second progress line on stderr, so a long bench shows it is moving (and how fast). */
export function progress(label: string, read: () => { done: number; total: number; extra?: string }): () => void {
  const started = Date.now();
  let last = 0;
  const tick = () => {
    const { done, total, extra } = read();
    const secs = (Date.now() - started) / 1000;
    const rate = done - last;
    last = done;
    process.stderr.write(`  [${label}] ${secs.toFixed(0)}s ${done}/${total} (+${rate}/s)${extra ? ` ${extra}` : ''}\n`);
  };
  const timer = setInterval(tick, 1000);
  return () => clearInterval(timer);
}

export const log = (msg: string) => process.stderr.write(`${msg}\n`);
