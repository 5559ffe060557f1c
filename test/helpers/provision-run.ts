/**
 * Runs takt's DHCP (and optionally TFTP) server from the sources, for integration tests that start it
 * inside a network namespace (`ip netns exec NS node --import tsx test/helpers/provision-run.ts JSON`).
 * Argument: `{"dhcp": DhcpConfig, "tftp"?: {"root", "address"}}`. Prints one JSON object per line:
 * `{"ready":true}` once bound, every DHCP/TFTP log entry, and `{"leases":[…]}` after every ACK. Ends on SIGTERM.
 */
import { MemoryLeaseStore } from '../../src/provision/dhcp/leases.js';
import { DhcpServer, type DhcpConfig } from '../../src/provision/dhcp/server.js';
import { TftpServer } from '../../src/provision/tftp/server.js';

const cfg = JSON.parse(process.argv[2] ?? '{}') as { dhcp: DhcpConfig; tftp?: { root: string; address: string } };
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const dhcp = new DhcpServer(cfg.dhcp, new MemoryLeaseStore(), {
  log: (e) => {
    out({ dhcp: e });
    if (e.event === 'ack') out({ leases: dhcp.leases() });
  },
});
const tftp = cfg.tftp ? new TftpServer({ ...cfg.tftp, log: (e) => out({ tftp: e }) }) : undefined;
await dhcp.start();
await tftp?.start();
out({ ready: true });
process.on('SIGTERM', () => {
  void Promise.all([dhcp.stop(), tftp?.stop()]).then(() => process.exit(0));
});
