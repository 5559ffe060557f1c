/** Registers every resource's commands; each resource's live in its own file (src/cli/<resource>.ts). */
import type { Command } from 'commander';
import { CONTENT_KINDS } from '../model/content-names.js';
import { approvalCommands } from './approvals.js';
import { bootenvBuildCommand } from './bootenv.js';
import { clientFrom, type Globals } from './client.js';
import { contentCommands } from './content.js';
import { credentialCommands } from './credentials.js';
import { imageCommands } from './images.js';
import { imageBuildCommand } from './image-build.js';
import { dhcpCommands } from './dhcp.js';
import { eventCommands } from './events.js';
import { exerciseCommand } from './exercise.js';
import { historyCommands } from './history.js';
import { jobCommands } from './jobs.js';
import { joinCommands } from './join.js';
import { machineCommands } from './machines.js';
import { objectCommands } from './objects.js';
import { planCommands } from './plan.js';
import { portableCommands } from './portable.js';
import { reportCommands } from './report.js';
import { policyCommands, rolloutCommands } from './rollouts.js';
import { runCommand } from './run.js';
import { storeCommands } from './store.js';
import { loginCommands } from './login.js';
import { roleCommands } from './roles.js';
import { tokenCommands } from './tokens.js';
import { auditCommands } from './audit.js';
import { userCommands } from './users.js';
import { workOrderCommands } from './workorders.js';

export function register(program: Command, g: Globals) {
  const api = () => clientFrom(g());
  contentCommands(program, g, api);
  machineCommands(program, g, api);
  joinCommands(program, g, api);
  jobCommands(program, g, api);
  workOrderCommands(program, g, api);
  for (const kind of CONTENT_KINDS) {
    const cmd = objectCommands(program, g, api, kind);
    if (kind === 'bootenvs') bootenvBuildCommand(cmd.alias('bootenv'), g, api);
  }
  historyCommands(program, g, api);
  portableCommands(program, g, api);
  rolloutCommands(program, g, api);
  runCommand(program, g, api);
  policyCommands(program, g, api);
  approvalCommands(program, g, api);
  reportCommands(program, g, api);
  exerciseCommand(program, g, api);
  credentialCommands(program, g, api);
  imageCommands(program, g, api);
  imageBuildCommand(program.commands.find((c) => c.name() === 'images')!, g);
  dhcpCommands(program, g, api);
  loginCommands(program, g, api);
  userCommands(program, g, api);
  roleCommands(program, g, api);
  tokenCommands(program, g, api);
  auditCommands(program, g, api);
  storeCommands(program, g);

  planCommands(program, g, api);
  eventCommands(program, g, api);
}
