/**
 * The names of content: its kinds, their nouns and the name patterns. Plain constants, apart from
 * content.ts's schemas so that the CLI builds its command tree without loading the schema library
 * (typebox: several hundred modules, most of `takt --version`'s start-up before this split).
 */

export const CONTENT_KINDS = ['params', 'profiles', 'tasks', 'stages', 'pipelines', 'blueprints', 'bootenvs', 'classifiers'] as const;
export type ContentKind = (typeof CONTENT_KINDS)[number];

/** Singular names for messages ("task 'x' not found"). */
export const KIND_NOUN: Record<ContentKind, string> = {
  params: 'param',
  profiles: 'profile',
  tasks: 'task',
  stages: 'stage',
  pipelines: 'pipeline',
  blueprints: 'blueprint',
  bootenvs: 'bootenv',
  classifiers: 'classifier',
};

export const NAME_PATTERN = '^[a-z0-9][a-z0-9._-]{0,62}$';
/** Param names are template identifiers, so no dashes or dots. */
export const PARAM_NAME_PATTERN = '^[a-z][a-z0-9_]{0,62}$';

/** The name patterns in words, for messages: people should not have to read a regular expression. */
const PATTERN_WORDS: Record<string, string> = {
  [NAME_PATTERN]: 'a lower-case name: 1 to 63 letters, digits, dots, underscores or dashes, starting with a letter or digit',
  [PARAM_NAME_PATTERN]: 'a lower-case identifier: 1 to 63 letters, digits or underscores, starting with a letter',
};

/** `pattern` (one of the patterns above) described in words, or undefined for another pattern. */
export function describePattern(pattern: string): string | undefined {
  return Object.hasOwn(PATTERN_WORDS, pattern) ? PATTERN_WORDS[pattern] : undefined;
}
