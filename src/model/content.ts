/**
 * Content objects: the automation a pack ships. One TypeBox schema per kind drives both the TypeScript
 * type and the JSON Schema the linter and the API validate with (additionalProperties: false everywhere,
 * so an unknown field is an error that names the field).
 */
import Type, { type Static } from 'typebox';
import { NAME_PATTERN, PARAM_NAME_PATTERN, type ContentKind } from './content-names.js';
export { CONTENT_KINDS, KIND_NOUN, NAME_PATTERN, PARAM_NAME_PATTERN, describePattern, type ContentKind } from './content-names.js';

const Name = Type.String({ pattern: NAME_PATTERN, description: 'lower-case name: letters, digits, . _ -' });
const ParamName = Type.String({ pattern: PARAM_NAME_PATTERN, description: 'lower-case identifier: letters, digits, _' });
const Description = Type.Optional(Type.String({ maxLength: 4096 }));
// Records close their key space too (TypeBox emits only patternProperties), so a bad key is an error.
const ParamValues = Type.Record(Type.String({ pattern: PARAM_NAME_PATTERN }), Type.Unknown(), {
  additionalProperties: false,
});
const Duration = Type.Union([Type.String({ pattern: '^\\d+(\\.\\d+)?(ms|s|m|h|d)?$' }), Type.Number({ minimum: 0 })], {
  description: 'a duration like 500ms, 30s, 5m, 2h or a number of seconds',
});
const closed = { additionalProperties: false } as const;

export const PackManifestSchema = Type.Object(
  {
    name: Name,
    version: Type.String({ pattern: '^\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?(\\+[0-9A-Za-z.-]+)?$', description: 'semver version like 1.2.3' }),
    description: Description,
    requires: Type.Optional(
      Type.Record(Type.String({ pattern: NAME_PATTERN }), Type.String({ description: 'semver range' }), { additionalProperties: false }),
    ),
  },
  closed,
);
export type PackManifest = Static<typeof PackManifestSchema>;

export const ParamSchema = Type.Object(
  {
    name: ParamName,
    description: Description,
    schema: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'JSON Schema for the value' })),
    secure: Type.Optional(Type.Boolean()),
  },
  closed,
);
export type ParamDef = Static<typeof ParamSchema>;

export const ProfileSchema = Type.Object(
  {
    name: Name,
    description: Description,
    include: Type.Optional(Type.Array(Name, { description: 'profiles whose params this one builds on' })),
    params: Type.Optional(ParamValues),
  },
  closed,
);
export type ProfileDef = Static<typeof ProfileSchema>;

const Variant = Type.Object(
  {
    script: Type.Optional(Type.String()),
    noop: Type.Optional(Type.String({ minLength: 1, description: 'the task deliberately does nothing here; say why' })),
  },
  closed,
);
export type TaskVariant = Static<typeof Variant>;

/**
 * A post-condition (on a task) or precondition (on a stage) over one param's value: after a task, its
 * outputs and the params it used; before a stage, the resolved params. Each rule names one check.
 */
export const ExpectRuleSchema = Type.Object(
  {
    param: ParamName,
    equals: Type.Optional(Type.Unknown({ description: 'the value must equal this' })),
    matches: Type.Optional(Type.String({ minLength: 1, description: 'regular expression the value (as text) must match' })),
    range: Type.Optional(Type.Object({ min: Type.Optional(Type.Number()), max: Type.Optional(Type.Number()) }, closed)),
    nonEmpty: Type.Optional(Type.Boolean({ description: 'present, and not an empty string, list or object' })),
    schema: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'JSON Schema the value must satisfy' })),
  },
  closed,
);
export type ExpectRule = Static<typeof ExpectRuleSchema>;

export const TaskSchema = Type.Object(
  {
    name: Name,
    description: Description,
    params: Type.Optional(
      Type.Object(
        { required: Type.Optional(Type.Array(ParamName)), optional: Type.Optional(Type.Array(ParamName)) },
        closed,
      ),
    ),
    script: Type.Optional(Type.String()),
    variants: Type.Optional(Type.Record(Type.String({ pattern: NAME_PATTERN }), Variant, { description: 'by machine environment', additionalProperties: false })),
    timeout: Type.Optional(Duration),
    retries: Type.Optional(Type.Integer({ minimum: 0, maximum: 10, description: 'opt-in automatic retries; 0 stops the line' })),
    outputs: Type.Optional(
      Type.Record(Type.String({ pattern: PARAM_NAME_PATTERN }), Type.Record(Type.String(), Type.Unknown()), {
        description: 'params the task promises to set with takt-set, each with the JSON Schema its value must satisfy',
        additionalProperties: false,
      }),
    ),
    expect: Type.Optional(Type.Array(ExpectRuleSchema, { description: 'post-conditions: a task that exits 0 but breaks one has failed' })),
  },
  closed,
);
export type TaskDef = Static<typeof TaskSchema>;

export const StageSchema = Type.Object(
  {
    name: Name,
    description: Description,
    tasks: Type.Array(Name, { minItems: 1 }),
    params: Type.Optional(ParamValues),
    expect: Type.Optional(Type.Array(ExpectRuleSchema, { description: 'preconditions checked before the stage starts' })),
    approval: Type.Optional(
      Type.Object(
        {
          role: Type.String({ minLength: 1, description: 'who may approve (or reject): holders of this built-in role, and admins, e.g. operator' }),
          twoPerson: Type.Optional(Type.Boolean({ description: 'the principal who started the run (set the pipeline, or started the rollout) may not approve it' })),
        },
        { ...closed, description: 'the machine waits here until approved' },
      ),
    ),
    bootenv: Type.Optional(Type.String({ pattern: NAME_PATTERN, description: 'the boot environment the machine must be booted into before this stage runs' })),
  },
  closed,
);
export type StageDef = Static<typeof StageSchema>;

export const PipelineSchema = Type.Object(
  {
    name: Name,
    description: Description,
    stages: Type.Array(Name, { minItems: 1 }),
    params: Type.Optional(ParamValues),
    environments: Type.Optional(Type.Array(Name, { description: 'environments this pipeline supports' })),
  },
  closed,
);
export type PipelineDef = Static<typeof PipelineSchema>;

export const BlueprintSchema = Type.Object(
  {
    name: Name,
    description: Description,
    tasks: Type.Array(Name, { minItems: 1 }),
    params: Type.Optional(ParamValues),
  },
  closed,
);
export type BlueprintDef = Static<typeof BlueprintSchema>;

/** A file name a boot artifact is served under: no directories, no leading dot. */
export const ARTIFACT_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$';

/**
 * One file a boot environment needs (kernel, initrd, extra file), kept by content hash: fetched once from
 * `url` (http, https or file) or copied from `path` (absolute, on the endpoint's host), checked against
 * `sha256`, and served to booting machines as `name`. Exactly one of `url` and `path`.
 */
export const BootArtifactSchema = Type.Object(
  {
    name: Type.String({ pattern: ARTIFACT_NAME_PATTERN, description: 'a file name: letters, digits, . _ + -' }),
    url: Type.Optional(Type.String({ pattern: '^(https?|file)://[^\\x00-\\x20]+$', description: 'an http://, https:// or file:// URL' })),
    path: Type.Optional(Type.String({ pattern: '^/[^\\x00-\\x1f]*$', description: 'an absolute path on the endpoint host' })),
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$', description: 'the sha256 of the file: 64 lower-case hex digits' }),
  },
  closed,
);
export type BootArtifact = Static<typeof BootArtifactSchema>;

/** Firmware a boot environment can boot on: legacy BIOS (PXE, undionly.kpxe) or UEFI (ipxe.efi). */
export const FIRMWARES = ['bios', 'uefi'] as const;
export type Firmware = (typeof FIRMWARES)[number];

/**
 * A boot environment (bootenv): what a machine boots from the network into — a kernel, its initrds and
 * command line, an iPXE script and extra files — in the manner of Digital Rebar's BootEnv. `cmdline` and
 * `ipxe` are templates rendered per machine by the one renderer (src/render/template.ts) with the
 * declared params, `machine`, `facts` and `boot` (the artifact URLs, the endpoint, the firmware).
 * Without `ipxe`, the script is the standard kernel + initrds + boot one; without a kernel, `ipxe` is
 * the whole script (e.g. `exit` to boot from disk).
 */
export const BootenvSchema = Type.Object(
  {
    name: Name,
    description: Description,
    firmware: Type.Optional(
      Type.Array(Type.Union(FIRMWARES.map((f) => Type.Literal(f)), { description: '"bios" or "uefi"' }), { minItems: 1, uniqueItems: true, description: 'firmware it boots on: bios, uefi (default both)' }),
    ),
    params: Type.Optional(
      Type.Object(
        { required: Type.Optional(Type.Array(ParamName)), optional: Type.Optional(Type.Array(ParamName)) },
        closed,
      ),
    ),
    kernel: Type.Optional(BootArtifactSchema),
    initrds: Type.Optional(Type.Array(BootArtifactSchema)),
    cmdline: Type.Optional(Type.String({ maxLength: 4096, description: 'kernel command line (a template)' })),
    ipxe: Type.Optional(Type.String({ description: 'the iPXE script (a template); default: kernel, initrds, boot' })),
    files: Type.Optional(Type.Array(BootArtifactSchema, { description: 'extra files served with it (preseed, images, ...)' })),
  },
  closed,
);
export type BootenvDef = Static<typeof BootenvSchema>;

/** Where a classifier stands among the others when no `order` is given; lower goes first. */
export const DEFAULT_CLASSIFIER_ORDER = 100;

/**
 * One classification rule: when every selector in `match` holds for a machine's facts (model/factselect.ts;
 * no `match`, or an empty one, holds for every machine), the machine gets the profiles (added after its
 * own), the environment, the pipeline and the params (those it has no value for) the rule gives.
 */
export const ClassifierRuleSchema = Type.Object(
  {
    name: Name,
    description: Description,
    match: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), {
        maxItems: 64,
        description: 'fact selectors that must all hold, e.g. memoryBytes>=2GiB, os.id in (debian, ubuntu); none: every machine',
      }),
    ),
    profiles: Type.Optional(Type.Array(Name, { uniqueItems: true, description: 'profiles added to the machine (after its own)' })),
    environment: Type.Optional(Type.String({ pattern: NAME_PATTERN, description: 'the environment the machine is in' })),
    pipeline: Type.Optional(Type.String({ pattern: NAME_PATTERN, description: 'the pipeline the machine is given' })),
    params: Type.Optional(ParamValues),
  },
  closed,
);
export type ClassifierRuleDef = Static<typeof ClassifierRuleSchema>;

/**
 * A classifier: ordered rules that give a discovered machine its profiles, environment and pipeline from
 * its facts. Every classifier of the endpoint is tried in `order` (then by name); within one, its rules in
 * file order; the first rule that matches wins (engine/classify.ts).
 */
export const ClassifierSchema = Type.Object(
  {
    name: Name,
    description: Description,
    order: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000, description: 'classifiers are tried lowest order first (default 100), then by name' })),
    rules: Type.Array(ClassifierRuleSchema, { minItems: 1, maxItems: 1000 }),
  },
  closed,
);
export type ClassifierDef = Static<typeof ClassifierSchema>;


export interface ContentByKind {
  params: ParamDef;
  profiles: ProfileDef;
  tasks: TaskDef;
  stages: StageDef;
  pipelines: PipelineDef;
  blueprints: BlueprintDef;
  bootenvs: BootenvDef;
  classifiers: ClassifierDef;
}
export type ContentObject = ContentByKind[ContentKind];

export const CONTENT_SCHEMAS = {
  params: ParamSchema,
  profiles: ProfileSchema,
  tasks: TaskSchema,
  stages: StageSchema,
  pipelines: PipelineSchema,
  blueprints: BlueprintSchema,
  bootenvs: BootenvSchema,
  classifiers: ClassifierSchema,
} as const;

/** The layer every object comes from: a pack (by name) or `local` (created through the API). */
export const LOCAL_LAYER = 'local';

/** The profile every machine implicitly builds on (lowest precedence above schema defaults). */
export const GLOBAL_PROFILE = 'global';

/** Every content object the endpoint knows, by kind and name, with the layer that owns it. */
export interface ContentSet {
  objects: { [K in ContentKind]: Map<string, { def: ContentByKind[K]; layer: string }> };
}

/** Whether param `name` is declared secure in `set` (an undeclared param is not). */
export function isSecureParam(set: ContentSet, name: string): boolean {
  return set.objects.params.get(name)?.def.secure === true;
}

export function emptyContentSet(): ContentSet {
  return {
    objects: {
      params: new Map(),
      profiles: new Map(),
      tasks: new Map(),
      stages: new Map(),
      pipelines: new Map(),
      blueprints: new Map(),
      bootenvs: new Map(),
      classifiers: new Map(),
    },
  };
}
